"""A hostile client cannot grow the server's memory past the documented bound.

The server is a real ``twistd runtara-core`` process, so its resident memory
can be read from /proc; the hostile client and a well-behaved one run in this
process over real UDP. The attack (issue 13): 100 streams over 4 connections,
each announcing a 60 MiB frame and sending 8 MiB of it without finishing.
Before the request budget, it grew the server from 57 MiB to over 440 MiB.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
import pytest_twisted

from runtara.client import RuntaraClient
from runtara.intake import CONNECTION_SLACK_BYTES
from runtara.quic.client import QuicConnectionError, connect
from runtara.quic.server import CONNECTION_RECEIVE_WINDOW
from tests.sdk.support import Process, ServerProcess, unique

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
BUDGET = 128 * MiB
"""The server's ``--max-buffered-bytes`` in this test."""
CONNECTIONS = 4
STREAMS_PER_CONNECTION = 25
ANNOUNCED = 60 * MiB
SENT_PER_STREAM = 8 * MiB
CHUNK = 256 * 1024
ATTACK_TIME_LIMIT = 90.0

INTERPRETER_SLACK = 48 * MiB
"""What the server may grow by beside the bytes it holds for requests: the
interpreter's allocator, bytearray over-allocation, aioquic's packet state."""


def documented_bound(connections: int) -> int:
    """docs/protocol.md section 2: the server-wide budget for large requests, plus
    per connection its slack for small requests and its QUIC receive window."""
    return BUDGET + connections * (CONNECTION_SLACK_BYTES + CONNECTION_RECEIVE_WINDOW)


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


class HostileStream:
    """Announces a large frame, then feeds it slowly and never finishes it."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.quic = connection._quic
        header = struct.pack(">IH", ANNOUNCED, 1)
        self.answer = connection.request(header, end_stream=False)
        self.answer.addBoth(self._answered)
        self.stream_id = max(connection._requests)
        self.sent = 0
        self.stopped = False

    def _answered(self, result) -> None:
        self.stopped = True

    def feed(self) -> None:
        """Queue one more chunk when the previous one has gone out."""
        if self.stopped or self.sent >= SENT_PER_STREAM:
            return
        stream = self.quic._streams.get(self.stream_id)
        if stream is None or not stream.sender.buffer_is_empty:
            return
        try:
            self.quic.send_stream_data(self.stream_id, b"\0" * CHUNK)
        except (RuntimeError, ValueError):
            self.stopped = True
            return
        self.sent += CHUNK
        self.connection._driver.transmit_soon()


@pytest.fixture
def processes():
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


@pytest_twisted.ensureDeferred
async def test_a_hostile_client_cannot_grow_the_server_past_the_bound(tmp_path, processes):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    server = ServerProcess(tmp_path, processes, ("--max-buffered-bytes", str(BUDGET)))
    await server.start()
    pid = server.process.popen.pid
    options = {"cafile": str(server.ca_file)}

    polite = await RuntaraClient.connect(reactor, "127.0.0.1", server.port, **options)
    instance_id = unique("polite")
    await polite.call("register_instance", {"instance_id": instance_id, "tenant_id": "t"})
    await polite.call(
        "checkpoint", {"instance_id": instance_id, "checkpoint_id": "warm", "state": b"w" * 9000}
    )
    baseline = resident_bytes(pid)

    hostile = [
        await connect(reactor, "127.0.0.1", server.port, **options) for _ in range(CONNECTIONS)
    ]
    streams = [HostileStream(c) for c in hostile for _ in range(STREAMS_PER_CONNECTION)]
    bound = documented_bound(CONNECTIONS + 1) + INTERPRETER_SLACK
    peak = baseline
    answers: list[float] = []
    started = time.monotonic()
    calls = 0
    while time.monotonic() - started < ATTACK_TIME_LIMIT:
        for stream in streams:
            stream.feed()
        asked = time.monotonic()
        calls += 1
        answer = await polite.call(
            "checkpoint",
            {"instance_id": instance_id, "checkpoint_id": f"c{calls}", "state": b"s" * 9000},
        )
        answers.append(time.monotonic() - asked)
        assert answer["found"] is False
        peak = max(peak, resident_bytes(pid))
        assert peak - baseline <= bound, (
            f"the server grew by {(peak - baseline) / MiB:.0f} MiB, "
            f"more than the bound of {bound / MiB:.0f} MiB"
        )
        if all(stream.stopped or stream.sent >= SENT_PER_STREAM for stream in streams):
            break
        await deferLater(reactor, 0.02)
    else:
        pytest.fail(f"the attack did not finish within {ATTACK_TIME_LIMIT:g} s")

    await polite.call("get_instance_status", {"instance_id": instance_id})
    peak = max(peak, resident_bytes(pid))
    refused = sum(stream.stopped for stream in streams)
    fed = [stream for stream in streams if not stream.stopped]
    assert peak - baseline <= bound
    assert refused >= len(streams) - CONNECTIONS, "one large request per connection at most"
    assert all(stream.sent >= SENT_PER_STREAM for stream in fed)
    assert max(answers) < 5.0, f"the well-behaved client waited {max(answers):.1f} s"
    assert len(answers) >= 10

    for connection in hostile:
        try:
            await connection.close()
        except QuicConnectionError:
            pass
    await polite.close()
