"""The seams of runtara, as zope.interface interfaces.

Methods are written without ``self``. Every method returning a Deferred
documents what it fires with and which ``runtara.errors`` it fails with.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IPersistence(Interface):
    """Durable state of instances, spoken in the protocol's domain.

    One method per operation; each method is ONE database transaction: all
    of its writes happen or none does. A method that fails with a
    ``DatabaseError`` has written nothing. Times are taken from the clock the
    provider was built with, as integer epoch milliseconds.

    Protocol methods take the caller's ``tenant_id``: an instance of another
    tenant is reported exactly like one that does not exist
    (``InstanceNotFound``). Management methods (after ``send_signal`` below)
    see every tenant.

    Failures: ``InstanceNotFound``, ``InvalidInstanceState``,
    ``InstanceAlreadyExists``, ``CheckpointNotFound`` as documented per
    method; any driver failure becomes ``DatabaseError`` (retryable when the
    connection was lost or the database was busy), never a raw driver error.
    """

    def start():
        """Open the connections. Fires with None; does not migrate."""

    def migrate():
        """Apply pending migrations from ``sql/<dialect>/`` through the ledger.

        Fires with the schema version now in force. Fails with
        ``SchemaTooNew`` when the database is newer than the code.
        """

    def schema_version():
        """Fire with the highest applied migration version (0 if none)."""

    def close():
        """Close every connection. Fires with None once they are closed."""

    def check_health():
        """Fire with True when a trivial query succeeds, else False. Never fails."""

    # -- the instance protocol (PROTOCOL.md section 6) -------------------

    def register_instance(instance_id, tenant_id, checkpoint_id, run_id=None, replay_index=False):
        """PROTOCOL.md 6.1. Fire with a ``Registration``.

        ``checkpoint_id`` and ``run_id`` may be None. Refusals about the instance are
        in-band (``success=False``, ``error`` says why, ``status`` is the
        instance's status or ``unknown``):

        - unknown instance with a ``checkpoint_id``:
          ``Checkpoint '<cp>' not found for instance '<id>'``; nothing written;
        - another tenant's instance: ``Instance '<id>' not found``;
        - terminal instance: ``Instance '<id>' is already <status>``;
        - known instance and a ``checkpoint_id`` it does not have: the
          checkpoint-not-found message, nothing written.

        Otherwise the instance is created (unknown) or updated (pending,
        running, suspended) to ``running`` with ``started_at = now``, a
        ``started`` event is written (with the checkpoint id when given),
        ``sleep_until`` is left alone, and ``resumed`` is true when the
        instance already had checkpoints; ``run_id`` is recorded as the run
        that started it.

        A registration whose ``run_id`` is the recorded one repeats that
        run's registration (its answer was lost): the instance is set
        ``running`` and nothing else is written (no ``started`` event,
        ``started_at`` kept).

        With ``replay_index`` a successful registration carries a
        ``ReplayIndex`` (docs/protocol.md 8.4): every checkpoint id of the
        instance, and the last failed attempt of every checkpoint id with
        attempts recorded and no checkpoint; None when either part has more
        than ``MAX_REPLAY_INDEX`` entries.
        """

    def save_checkpoint(instance_id, tenant_id, checkpoint_id, state, received=None):
        """PROTOCOL.md 6.2, save-or-return. Fire with a ``CheckpointResult``.

        The instance must be ``running`` (else ``InvalidInstanceState`` with
        expected ``running``). The first call for (id, cp) stores ``state``,
        sets the instance's current checkpoint and answers ``found=False,
        state=b""``; every later call answers ``found=True`` with the state
        stored first and writes no state. Concurrent first calls store one
        state; exactly one of them sees ``found=False``.

        ``pending_signal`` is the unacknowledged instance-wide signal (not
        consumed). ``custom_signal`` is the one addressed to exactly this cp,
        which is consumed (deleted) in the same transaction.

        ``received`` (docs/protocol.md 8.3) is a ``CustomSignal`` the client
        peeked at (with its ``signal_id``) and whose payload ``state`` holds:
        when this call stores the state, the same transaction deletes that
        custom signal if it is still pending with that id (a newer payload
        stays pending). A call that finds a stored state consumes nothing.
        """

    def get_checkpoint(instance_id, tenant_id, checkpoint_id):
        """PROTOCOL.md 6.3. Fire with the stored state (bytes) or None.

        Any status; writes nothing. ``tenant_id`` None means any tenant
        (operators). ``InstanceNotFound`` for an unknown instance.
        """

    def replay_checkpoint(instance_id, tenant_id, checkpoint_id):
        """PROTOCOL.md 6.3 with ``last_attempt`` (docs/protocol.md 8.4).

        Fire with a ``CheckpointResult``: ``found`` and ``state`` as
        ``get_checkpoint``, and ``last_attempt``, the failed attempt with the
        highest number recorded for the checkpoint id (None if none). Any
        status; writes nothing. ``InstanceNotFound``.
        """

    def begin_sleep(instance_id, tenant_id, checkpoint_id, state, duration_ms):
        """PROTOCOL.md 6.4, the transaction before the timer. Fire with a ``SleepPlan``.

        The instance must be ``running`` (else ``InvalidInstanceState``).

        - cp not saved yet: save (cp, state) as a checkpoint and make it the
          current one, ``sleep_until = now + duration_ms`` recorded as the
          wake time of the sleep cp, status ``suspended``, a ``sleep`` event;
          plan wakes at ``sleep_until``.
        - cp saved and it is the recorded sleep (``sleep_until`` set for cp):
          keep ``sleep_until``, status ``suspended``; plan wakes at the
          recorded ``sleep_until``.
        - cp saved and it is not the recorded sleep (it ended in an earlier
          run, even while a later sleep is pending): nothing written;
          ``SleepPlan(wake_at_ms=None)``.
        """

    def finish_sleep(instance_id, checkpoint_id):
        """PROTOCOL.md 6.4, the transaction after the timer. Fire with the ``Status``.

        When the instance is still ``suspended`` and ``sleep_until`` is the
        wake time of the sleep ``checkpoint_id``: status ``running``,
        ``sleep_until`` cleared, a ``wake`` event with the checkpoint id.
        Otherwise (cancelled while asleep, say) nothing is written. Fires
        with the status the instance has afterwards.
        """

    def record_event(instance_id, tenant_id, event):
        """PROTOCOL.md 6.5. ``event`` is an ``Event``. Fire with None.

        Writes the event row (``client_ts`` = ``event.timestamp_ms``) and the
        status change in one transaction: ``completed`` -> status completed,
        ``finished_at``, ``output = payload``; ``failed`` -> status failed,
        ``finished_at``, ``error`` = payload as UTF-8 (``Unknown error`` when
        empty, ``Unknown error (binary payload)`` when not UTF-8);
        ``suspended`` -> status suspended; ``heartbeat``/``custom`` -> none.
        A terminal instance accepts heartbeat and custom only, else
        ``InvalidInstanceState`` (expected ``non-terminal``).
        """

    def get_instance_status(instance_id, tenant_id):
        """PROTOCOL.md 6.7. Fire with an ``InstanceRecord``, or None when the
        instance is unknown or belongs to another tenant."""

    def poll_signals(instance_id, tenant_id, checkpoint_id, peek=False):
        """PROTOCOL.md 6.8. Fire with ``Signals``.

        The instance-wide signal is reported, not consumed. The custom signal
        for ``checkpoint_id`` (None: no custom signal is looked at) is
        returned and consumed; with ``peek`` (docs/protocol.md 8.3) it is
        returned with its ``signal_id`` and left pending: nothing is written.
        """

    def acknowledge_signal(instance_id, tenant_id, signal_type, acknowledged, idempotent=False):
        """PROTOCOL.md 6.9. Fire with an ``AckResult`` (status after the call).

        ``acknowledged`` False, or a ``signal_type`` that is not the pending
        signal's: ``success=False``, nothing written. Otherwise the signal is
        marked acknowledged and, in the same transaction, cancel -> status
        ``cancelled`` + ``finished_at``; pause -> ``suspended``; resume ->
        ``running`` if ``suspended`` with no ``sleep_until``. A terminal
        instance keeps its status (the signal is still acknowledged).

        ``idempotent`` (docs/protocol.md 8.2): when the instance's latest
        signal has ``signal_type`` and is already acknowledged, the call is a
        repeat of that acknowledgement: ``success=True`` and the status
        change above is applied again (a re-registration in between may have
        set the instance running).
        """

    def record_retry_attempt(
        instance_id, tenant_id, checkpoint_id, attempt_number, timestamp_ms, error_message
    ):
        """PROTOCOL.md 6.10. Fire with None. The same (cp, attempt) twice keeps one row."""

    # -- management (PROTOCOL.md section 7, CLI.md) -----------------------

    def send_signal(instance_id, signal_type, payload):
        """Make ``signal_type`` the instance's pending signal. Fire with None.

        Replaces any older signal and clears its acknowledgement.
        ``InstanceNotFound``; ``InvalidInstanceState`` (expected
        ``non-terminal``) for a terminal instance.
        """

    def send_custom_signal(instance_id, checkpoint_id, payload):
        """Make ``payload`` the pending custom signal for (id, cp); newest wins.

        Fire with None. ``InstanceNotFound`` for an unknown instance;
        ``InvalidInstanceState`` (expected ``non-terminal``) for a terminal
        one: nobody could receive the signal.
        """

    def create_instance(instance_id, tenant_id):
        """Create an instance in ``pending``. Fire with its ``InstanceRecord``.

        ``InstanceAlreadyExists`` if the id is taken (by any tenant).
        """

    def get_instance(instance_id):
        """Fire with ``InstanceDetails`` (record, pending signal, counts).

        ``InstanceNotFound`` for an unknown instance.
        """

    def list_instances(tenant_id, status, limit, offset):
        """Fire with a list of ``InstanceRecord``, newest first.

        ``tenant_id`` and ``status`` (a ``Status``) filter when not None.
        Order: ``created_at`` descending, then ``instance_id`` descending.
        """

    def count_instances(tenant_id, status):
        """Fire with the number of instances ``list_instances`` would list
        without limit and offset."""

    def list_instances_after(tenant_id, status, after, limit):
        """Fire with at most ``limit`` instances in ``list_instances``' order,
        filtered the same way, that come after ``after``: the
        ``(created_at_ms, instance_id)`` of the last instance already seen, or
        None to start from the newest. Paging this way skips and repeats
        nothing when instances are created between pages.
        """

    def count_by_status(tenant_id=None):
        """Fire with a dict mapping each ``Status`` that occurs to its count
        (the instances of ``tenant_id`` only, when not None)."""

    def list_checkpoints(instance_id, limit, offset):
        """Fire with a list of ``CheckpointInfo``, newest first (``created_at``
        descending, then checkpoint id descending). ``InstanceNotFound``."""

    def list_events(instance_id, event_type, subtype, limit, offset):
        """Fire with a list of ``EventRecord``, newest first (by event id).

        ``event_type`` (an ``EventType``) and ``subtype`` filter when not
        None. ``InstanceNotFound`` for an unknown instance.
        """

    def count_purgeable(finished_before_ms):
        """Fire with how many terminal instances finished before the time."""

    def purge_finished(finished_before_ms, limit):
        """Delete at most ``limit`` terminal instances finished before the
        time, with their checkpoints, events, signals, custom signals and
        retry attempts. Fire with how many instances were deleted (0 when
        none is left)."""


class IDatabaseEngine(Interface):
    """How transactions run on one database; what they do is ``Store``'s.

    An engine opens and closes its connections and runs transaction bodies
    (``runtara.persistence.transaction``), one transaction each. It turns
    its driver's failures into ``DatabaseError`` (retryable when the
    connection was lost or the database was busy; details never hold SQL
    text, parameters or passwords). Errors a body raises itself (the domain
    errors of ``runtara.errors``) roll its transaction back and reach the
    caller unchanged.
    """

    dialect = Attribute("The ``Dialect`` whose SQL fragments bodies use.")
    description = Attribute("Where the database is, safe to log (no password).")

    def start():
        """Open the connections. Fires with None, or fails with ``DatabaseError``."""

    def close():
        """Close every connection (idempotent). Fires with None once closed.

        Transactions submitted before are run and answered first; later ones
        fail with ``DatabaseError`` ("database is not open").
        """

    def transact(operation, writes, body, args, now_ms):
        """Run ``body(tx, *args)`` in one transaction; fire with its result.

        ``operation`` names it in errors and logs; ``writes`` is False when
        the body only reads; ``now_ms`` becomes ``tx.now_ms``. The result is
        delivered only after the transaction committed.
        """


class IQuicChannel(Interface):
    """The server side of one QUIC connection, as the RPC layer sees it.

    Provided by the QUIC transport (``runtara.quic``). Every method may be
    called at any time, including from Deferred callbacks outside datagram
    processing: the channel schedules the datagrams to send itself. Calls on
    a connection that has already terminated are silently ignored.
    """

    peer = Attribute("The peer's (host, port) address.")

    def send_stream_data(stream_id, data, end_stream):
        """Queue ``data`` (bytes) on the stream; ``end_stream`` sends FIN."""

    def stop_stream(stream_id, error_code):
        """Ask the peer to stop sending on the stream (QUIC STOP_SENDING)."""

    def reset_stream(stream_id, error_code):
        """Abandon our sending side of the stream (QUIC RESET_STREAM)."""

    def close(error_code, reason):
        """Close the connection with an application close (``error_code``
        int, ``reason`` str)."""


class IConnectionHandler(Interface):
    """Receives what happens on one QUIC connection (the RPC layer provides it).

    The transport creates one handler per connection, once the handshake has
    completed, through a factory ``handler_factory(channel) -> handler``.
    """

    def stream_data_received(stream_id, data, end_stream):
        """Bytes arrived on a client-initiated bidirectional stream.

        ``data`` may be empty when only the FIN arrives.
        """

    def stream_reset(stream_id):
        """The peer reset its sending side of the stream."""

    def connection_lost(reason):
        """The connection terminated (``reason`` is a short str). Called once."""
