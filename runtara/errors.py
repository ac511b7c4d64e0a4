"""Errors with the stable wire identity of PROTOCOL.md section 4.

Each error class carries its ``kind`` and builds its message from the
protocol's templates. The operation that failed supplies the ``code`` when
the error is put on the wire (see ``runtara.dispatch``), so persistence and
handlers never need to know which code their caller answers with.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    INSTANCE_NOT_FOUND = "INSTANCE_NOT_FOUND"
    INSTANCE_ALREADY_EXISTS = "INSTANCE_ALREADY_EXISTS"
    INVALID_INSTANCE_STATE = "INVALID_INSTANCE_STATE"
    CHECKPOINT_NOT_FOUND = "CHECKPOINT_NOT_FOUND"
    CHECKPOINT_SAVE_FAILED = "CHECKPOINT_SAVE_FAILED"
    SIGNAL_DELIVERY_FAILED = "SIGNAL_DELIVERY_FAILED"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DATABASE_ERROR = "DATABASE_ERROR"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"


class RuntaraError(Exception):
    """Base of every error that has a place on the wire."""

    kind: ErrorKind = ErrorKind.INTERNAL
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InstanceNotFound(RuntaraError):
    kind = ErrorKind.INSTANCE_NOT_FOUND

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"Instance '{instance_id}' not found")
        self.instance_id = instance_id


class InstanceAlreadyExists(RuntaraError):
    kind = ErrorKind.INSTANCE_ALREADY_EXISTS

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"Instance '{instance_id}' already exists")
        self.instance_id = instance_id


class InvalidInstanceState(RuntaraError):
    kind = ErrorKind.INVALID_INSTANCE_STATE

    def __init__(self, instance_id: str, expected: str, actual: str) -> None:
        super().__init__(
            f"Instance '{instance_id}' is in invalid state: expected '{expected}', got '{actual}'"
        )
        self.instance_id = instance_id
        self.expected = expected
        self.actual = actual


class CheckpointNotFound(RuntaraError):
    kind = ErrorKind.CHECKPOINT_NOT_FOUND

    def __init__(self, instance_id: str, checkpoint_id: str) -> None:
        super().__init__(f"Checkpoint '{checkpoint_id}' not found for instance '{instance_id}'")
        self.instance_id = instance_id
        self.checkpoint_id = checkpoint_id


class ValidationError(RuntaraError):
    kind = ErrorKind.VALIDATION_ERROR

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"Validation error for '{field}': {message}")
        self.field = field


class PermissionDenied(RuntaraError):
    kind = ErrorKind.PERMISSION_DENIED


class Unauthenticated(RuntaraError):
    kind = ErrorKind.UNAUTHENTICATED


class ResourceExhausted(RuntaraError):
    kind = ErrorKind.RESOURCE_EXHAUSTED
    retryable = True


class Unavailable(RuntaraError):
    kind = ErrorKind.UNAVAILABLE
    retryable = True


class DatabaseError(RuntaraError):
    """A database failure. ``details`` must never hold SQL text or user data.

    ``retryable`` is true when the same call may succeed later unchanged,
    e.g. after a lost connection.
    """

    kind = ErrorKind.DATABASE_ERROR

    def __init__(self, operation: str, details: str, retryable: bool) -> None:
        super().__init__(f"Database error during '{operation}': {details}")
        self.operation = operation
        self.details = details
        self.retryable = retryable


class InternalError(RuntaraError):
    kind = ErrorKind.INTERNAL

    def __init__(self, message: str = "Internal server error") -> None:
        super().__init__(message)


class SchemaTooNew(Exception):
    """The database was migrated by a newer runtara than this one."""

    def __init__(self, database_version: int, code_version: int) -> None:
        super().__init__(
            f"database schema version {database_version} is newer than this "
            f"runtara supports ({code_version}); upgrade runtara"
        )
        self.database_version = database_version
        self.code_version = code_version
