"""The listening UDP socket (issue: benchmarks found datagrams dropped in bursts)."""

import socket
from pathlib import Path

import pytest
import pytest_twisted

from runtara.config import Config
from runtara.database_url import embedded_sqlite
from runtara.runtime import start_core
from runtara.service import UDP_RECEIVE_BUFFER_BYTES

pytestmark = pytest.mark.e2e


@pytest_twisted.ensureDeferred
async def test_the_listener_asks_for_a_large_receive_buffer(core):
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    udp_socket = core.service.listener._port.getHandle()
    granted = udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert granted >= min(UDP_RECEIVE_BUFFER_BYTES, rmem_max)


@pytest_twisted.ensureDeferred
async def test_an_embedded_server_refuses_a_reachable_host_without_tokens(tmp_path):
    from twisted.internet import reactor

    config = Config(database_url=embedded_sqlite(tmp_path), state_dir=tmp_path, quic_host="0.0.0.0")
    with pytest.raises(ValueError, match="0.0.0.0 is not a loopback address"):
        await start_core(config, reactor)


@pytest_twisted.ensureDeferred
async def test_an_embedded_server_listens_on_loopback_by_default(tmp_path):
    from twisted.internet import reactor

    config = Config(
        database_url=embedded_sqlite(tmp_path), state_dir=tmp_path, quic_port=0, http_port=None
    )
    core = await start_core(config, reactor)
    try:
        assert core.host == "127.0.0.1"
    finally:
        await core.stop()
