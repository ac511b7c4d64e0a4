"""InstanceSession: registration, reconnection with backoff, and which calls are retried."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from runtara.client import RemoteError
from runtara.quic.client import CertificateMismatch, ConnectTimeout, QuicConnectionError
from runtara.sdk import (
    Backoff,
    RegistrationRefused,
    SdkConfig,
    ServerUnreachable,
    SessionClosed,
    Status,
)
from runtara.sdk.connection import Connection, InstanceSession
from tests.sdk.fakes import FakeLink, fired, retryable_error, server_handler

BACKOFF = Backoff(initial=1.0, multiplier=2.0, maximum=4.0)


def make_config(**overrides) -> SdkConfig:
    settings = {
        "instance_id": "i-1",
        "tenant_id": "t",
        "auth_token": "tok",
        "reconnect_backoff": BACKOFF,
        "give_up_after": 30.0,
        "request_timeout": 5.0,
    }
    settings.update(overrides)
    return SdkConfig(**settings)


class Connector:
    """Hands out the next outcome for every connection attempt: a link or an exception."""

    def __init__(self, clock: Clock, *outcomes) -> None:
        self.clock = clock
        self.outcomes = list(outcomes)
        self.attempted_at: list[float] = []
        self.links: list[FakeLink] = []

    async def __call__(self) -> FakeLink:
        self.attempted_at.append(self.clock.seconds())
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        link = outcome() if callable(outcome) else outcome
        self.links.append(link)
        return link


def session_with(clock, *outcomes, **overrides) -> tuple[InstanceSession, Connector]:
    connector = Connector(clock, *outcomes)
    return InstanceSession(clock, make_config(**overrides), connector), connector


def healthy(**answers):
    return lambda: FakeLink(server_handler(**answers))


def advance_through(clock: Clock, *delays: float) -> None:
    for delay in delays:
        clock.advance(delay)


def test_open_registers_with_the_token():
    clock = Clock()
    session, connector = session_with(clock, healthy())
    registration = fired(ensureDeferred(session.open()))
    assert registration.success and registration.status is Status.RUNNING
    operation, fields = connector.links[0].calls[0]
    assert operation == "register_instance"
    assert fields == {
        "instance_id": "i-1",
        "tenant_id": "t",
        "run_id": session.run_id,
        "replay_index": True,
        "token": "tok",
    }
    assert len(session.run_id) == 32
    assert session.connected and session.connections == 1


def test_connecting_is_retried_with_exponential_backoff():
    clock = Clock()
    lost = QuicConnectionError(1, "Idle timeout")
    session, connector = session_with(
        clock, ConnectTimeout(10), lost, OSError("unreachable"), lost, healthy()
    )
    opened = ensureDeferred(session.open())
    advance_through(clock, 1.0, 2.0, 4.0)
    assert not opened.called
    clock.advance(4.0)
    assert fired(opened).success
    assert connector.attempted_at == [0.0, 1.0, 3.0, 7.0, 11.0]


def test_a_retryable_registration_error_is_retried_on_the_same_connection():
    clock = Clock()
    busy = RemoteError("REGISTER_INSTANCE_ERROR", "RESOURCE_EXHAUSTED", "Too many", True)
    answers = [busy, {"success": True, "error": "", "status": "running", "resumed": False}]

    def register_instance(fields):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    session, connector = session_with(clock, healthy(register_instance=register_instance))
    opened = ensureDeferred(session.open())
    assert not opened.called
    clock.advance(1.0)
    assert fired(opened).success
    assert len(connector.links) == 1 and not connector.links[0].closed
    assert connector.links[0].operations() == ["register_instance", "register_instance"]


@pytest.mark.parametrize(
    "error",
    [
        CertificateMismatch("AA", "BB"),
        QuicConnectionError(0x100 + 42, "bad certificate"),
        QuicConnectionError(0x178, "No common ALPN protocols"),
    ],
)
def test_tls_rejections_are_not_retried(error):
    clock = Clock()
    session, connector = session_with(clock, error, healthy())
    with pytest.raises(QuicConnectionError):
        fired(ensureDeferred(session.open()))
    assert len(connector.attempted_at) == 1


def test_an_unauthenticated_registration_is_not_retried():
    clock = Clock()
    refused = RemoteError("REGISTER_INSTANCE_ERROR", "UNAUTHENTICATED", "Invalid token", False)
    session, _ = session_with(clock, healthy(register_instance=refused))
    with pytest.raises(RemoteError) as caught:
        fired(ensureDeferred(session.open()))
    assert caught.value.kind == "UNAUTHENTICATED"
    assert clock.getDelayedCalls() == []


def test_an_in_band_refusal_raises_registration_refused():
    clock = Clock()
    answer = {
        "success": False,
        "error": "Instance 'i-1' is already completed",
        "status": "completed",
    }
    session, _ = session_with(clock, healthy(register_instance=answer))
    with pytest.raises(RegistrationRefused) as caught:
        fired(ensureDeferred(session.open()))
    assert caught.value.status is Status.COMPLETED
    assert "already completed" in str(caught.value)


def test_connecting_gives_up_after_the_configured_time():
    clock = Clock()
    session, connector = session_with(clock, OSError("unreachable"), give_up_after=10.0)
    opened = ensureDeferred(session.open())
    advance_through(clock, 1.0, 2.0, 4.0, 4.0)
    with pytest.raises(ServerUnreachable) as caught:
        fired(opened)
    assert isinstance(caught.value.last_error, OSError)
    assert connector.attempted_at == [0.0, 1.0, 3.0, 7.0, 11.0]


def test_a_call_waits_for_the_connection():
    clock = Clock()
    session, _ = session_with(clock, OSError("down"), healthy(health={"database": "ok"}))
    answer = ensureDeferred(session.call("health", {}))
    assert not answer.called
    clock.advance(1.0)
    assert fired(answer) == {"database": "ok"}


def test_a_retryable_error_is_retried_with_backoff():
    clock = Clock()
    answers = [retryable_error(), retryable_error(), {"found": False, "state": b""}]

    def checkpoint(fields):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    session, connector = session_with(clock, healthy(checkpoint=checkpoint))
    answer = ensureDeferred(session.call("checkpoint", {"checkpoint_id": "a"}))
    clock.advance(1.0)
    assert not answer.called
    clock.advance(2.0)
    assert fired(answer) == {"found": False, "state": b""}
    assert connector.links[0].operations().count("checkpoint") == 3


def test_a_non_retryable_error_is_raised_at_once():
    clock = Clock()
    invalid = RemoteError("CHECKPOINT_ERROR", "INVALID_INSTANCE_STATE", "not running", False)
    session, connector = session_with(clock, healthy(checkpoint=invalid))
    with pytest.raises(RemoteError) as caught:
        fired(ensureDeferred(session.call("checkpoint", {})))
    assert caught.value.kind == "INVALID_INSTANCE_STATE"
    assert connector.links[0].operations().count("checkpoint") == 1


def test_retryable_errors_give_up_with_the_last_error():
    clock = Clock()
    session, _ = session_with(clock, healthy(checkpoint=retryable_error()), give_up_after=5.0)
    answer = ensureDeferred(session.call("checkpoint", {}))
    advance_through(clock, 1.0, 2.0, 4.0)
    with pytest.raises(RemoteError) as caught:
        fired(answer)
    assert caught.value.retryable


def test_a_lost_connection_is_replaced_re_registered_and_the_call_retried():
    clock = Clock()
    first_answer: Deferred[dict] = Deferred()
    first = FakeLink(server_handler(sleep=lambda fields: first_answer))
    second = FakeLink(server_handler(sleep={"slept_ms": 10, "wake_at_ms": 99}))
    session, connector = session_with(clock, first, second)
    fired(ensureDeferred(session.open()))

    slept = ensureDeferred(session.call("sleep", {"checkpoint_id": "nap"}, timeout=60))
    first.terminate("Idle timeout")
    assert not session.connected
    clock.advance(1.0)

    assert fired(slept) == {"slept_ms": 10, "wake_at_ms": 99}
    assert second.operations() == ["register_instance", "sleep"]
    assert session.connections == 2
    run_ids = {link.calls[0][1]["run_id"] for link in (first, second)}
    assert run_ids == {session.run_id}, "registering again is the same run"


def test_a_lost_connection_is_replaced_even_when_idle():
    clock = Clock()
    session, connector = session_with(clock, healthy())
    fired(ensureDeferred(session.open()))
    connector.links[0].terminate()
    assert session.connected
    assert [link.operations() for link in connector.links] == [
        ["register_instance"],
        ["register_instance"],
    ]


def test_a_call_that_times_out_resets_the_connection_and_is_retried():
    clock = Clock()
    hanging = FakeLink(server_handler(get_checkpoint=lambda fields: Deferred()))
    session, connector = session_with(clock, hanging, healthy(get_checkpoint={"found": False}))
    fired(ensureDeferred(session.open()))

    answer = ensureDeferred(session.call("get_checkpoint", {}))
    clock.advance(5.0)
    assert hanging.closed
    clock.advance(1.0)
    assert fired(answer) == {"found": False}
    assert connector.links[1].operations() == ["register_instance", "get_checkpoint"]


def test_a_refused_re_registration_fails_the_pending_calls():
    clock = Clock()
    refused = {
        "success": False,
        "error": "Instance 'i-1' is already cancelled",
        "status": "cancelled",
    }
    first = FakeLink(server_handler(signal_ack=lambda fields: Deferred()))
    session, _ = session_with(clock, first, healthy(register_instance=refused))
    fired(ensureDeferred(session.open()))

    ack = ensureDeferred(session.call("signal_ack", {"signal_type": "cancel"}))
    first.terminate()
    clock.advance(1.0)
    with pytest.raises(RegistrationRefused) as caught:
        fired(ack)
    assert caught.value.status is Status.CANCELLED


def test_close_fails_pending_and_later_calls():
    clock = Clock()
    session, connector = session_with(clock, OSError("down"))
    pending = ensureDeferred(session.call("health", {}))
    fired(ensureDeferred(session.close()))
    with pytest.raises(SessionClosed):
        fired(pending)
    with pytest.raises(SessionClosed):
        fired(ensureDeferred(session.call("health", {})))
    assert clock.getDelayedCalls() == []


def test_close_closes_the_link_without_reconnecting():
    clock = Clock()
    session, connector = session_with(clock, healthy())
    fired(ensureDeferred(session.open()))
    fired(ensureDeferred(session.close()))
    assert connector.links[0].closed
    assert len(connector.links) == 1


def test_calls_cut_by_close_fail_at_once():
    clock = Clock()
    session, _ = session_with(clock, healthy(sleep=lambda fields: Deferred()))
    fired(ensureDeferred(session.open()))
    slept = ensureDeferred(session.call("sleep", {}, timeout=60))
    fired(ensureDeferred(session.close()))
    with pytest.raises(SessionClosed):
        fired(slept)
    assert clock.getDelayedCalls() == []


# -- one connection, several instances ------------------------------------------------------


def shared(clock, *outcomes) -> tuple[Connection, Connector]:
    connector = Connector(clock, *outcomes)
    return Connection(clock, make_config(instance_id=""), connector), connector


def registered_ids(link: FakeLink) -> list[str]:
    return [fields["instance_id"] for op, fields in link.calls if op == "register_instance"]


def test_sessions_of_one_connection_register_on_the_same_link():
    clock = Clock()
    connection, connector = shared(clock, healthy(health={"database": "ok"}))
    first, second = connection.session("i-1"), connection.session("i-2")

    fired(ensureDeferred(first.open()))
    fired(ensureDeferred(second.open()))
    answer = fired(ensureDeferred(second.call("health", {})))

    assert answer == {"database": "ok"}
    assert len(connector.links) == 1 and connection.connections == 1
    assert registered_ids(connector.links[0]) == ["i-1", "i-2"]
    assert first.run_id != second.run_id


def test_a_lost_shared_link_is_replaced_once_and_every_session_registers_again():
    clock = Clock()
    connection, connector = shared(clock, healthy())
    sessions = [connection.session(f"i-{n}") for n in (1, 2, 3)]
    for session in sessions:
        fired(ensureDeferred(session.open()))

    connector.links[0].terminate()

    assert len(connector.links) == 2
    assert sorted(registered_ids(connector.links[1])) == ["i-1", "i-2", "i-3"]
    assert all(session.connected and session.connections == 2 for session in sessions)


def test_closing_one_session_fails_its_calls_and_leaves_the_others_served():
    clock = Clock()
    connection, connector = shared(
        clock, healthy(sleep=lambda fields: Deferred(), health={"database": "ok"})
    )
    leaving, staying = connection.session("i-1"), connection.session("i-2")
    fired(ensureDeferred(leaving.open()))
    fired(ensureDeferred(staying.open()))
    sleeping = ensureDeferred(leaving.call("sleep", {}, timeout=60))

    fired(ensureDeferred(leaving.close()))

    with pytest.raises(SessionClosed):
        fired(sleeping)
    assert not connector.links[0].closed
    assert fired(ensureDeferred(staying.call("health", {}))) == {"database": "ok"}


def test_a_refused_instance_does_not_disturb_the_others():
    clock = Clock()

    def register_instance(fields):
        if fields["instance_id"] == "done":
            return {
                "success": False,
                "error": "Instance 'done' is already completed",
                "status": "completed",
            }
        return {"success": True, "error": "", "status": "running", "resumed": False}

    connection, connector = shared(clock, healthy(register_instance=register_instance))
    with pytest.raises(RegistrationRefused):
        fired(ensureDeferred(connection.session("done").open()))

    assert fired(ensureDeferred(connection.session("i-2").open())).success
    assert len(connector.links) == 1 and not connector.links[0].closed


def test_closing_the_connection_closes_every_session():
    clock = Clock()
    connection, connector = shared(clock, healthy(sleep=lambda fields: Deferred()))
    session = connection.session("i-1")
    fired(ensureDeferred(session.open()))
    sleeping = ensureDeferred(session.call("sleep", {}, timeout=60))

    fired(ensureDeferred(connection.close()))

    with pytest.raises(SessionClosed):
        fired(sleeping)
    assert connector.links[0].closed
    with pytest.raises(SessionClosed):
        fired(ensureDeferred(connection.session("i-2").open()))
    assert clock.getDelayedCalls() == []
