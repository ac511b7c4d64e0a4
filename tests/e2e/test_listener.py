"""The listening UDP socket (issue: benchmarks found datagrams dropped in bursts)."""

import socket
from pathlib import Path

import pytest
import pytest_twisted

from runtara.service import UDP_RECEIVE_BUFFER_BYTES

pytestmark = pytest.mark.e2e


@pytest_twisted.ensureDeferred
async def test_the_listener_asks_for_a_large_receive_buffer(core):
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    udp_socket = core.service.listener._port.getHandle()
    granted = udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert granted >= min(UDP_RECEIVE_BUFFER_BYTES, rmem_max)
