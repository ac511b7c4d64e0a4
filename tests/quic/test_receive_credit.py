"""The server's receive credit (flow control) over the in-memory network.

aioquic on its own doubles a stream's and a connection's credit whenever half
of it is used, and buffers out-of-order data as large as its gap; the server
keeps both bounded (``runtara.quic._server_connection``). The hostile clients
here are aioquic clients whose send buffers are tampered with, to send data
out of order: the only way to leave a gap the server must buffer.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.serialization import Encoding

from runtara.quic.client import connect
from runtara.quic.server import QuicServerProtocol, server_configuration
from tests.quic.support import SERVER_ADDRESS, HandlerFactory, succeeded

KiB = 1024
MiB = 1024 * KiB


def start_server(reactor, certificate, **windows):
    handlers = HandlerFactory()
    protocol = QuicServerProtocol(
        reactor,
        server_configuration(certificate.certificate, certificate.private_key, **windows),
        handlers,
    )
    reactor.network.listen(protocol, *SERVER_ADDRESS)
    return handlers


def open_client(reactor, certificate):
    pem = certificate.certificate.public_bytes(Encoding.PEM)
    return succeeded(connect(reactor, *SERVER_ADDRESS, cadata=pem), reactor.network)


def send_with_a_gap(client, data: bytes, gap: int = 1000) -> int:
    """Queue ``data`` on a new stream but never send its first ``gap`` bytes, so
    everything else arrives out of order; the stream id."""
    quic = client._quic
    stream_id = quic.get_next_available_stream_id()
    quic.send_stream_data(stream_id, data)
    quic._streams[stream_id].sender._pending.subtract(0, gap)
    client._driver.transmit()
    return stream_id


def sent_up_to(client, stream_id: int) -> int:
    """The highest offset the client could send on the stream."""
    return client._quic._streams[stream_id].sender.highest_offset


def test_a_stream_never_gets_more_credit_than_it_started_with(reactor, network, certificate):
    handlers = start_server(reactor, certificate, stream_window=1000)
    client = open_client(reactor, certificate)

    pending = client.request(os.urandom(5000))
    network.run(2.0)

    [handler] = handlers.handlers
    assert [len(data) for data in handler.received.values()] == [1000]
    assert not pending.called
    pending.addErrback(lambda failure: None)


def test_out_of_order_data_is_bounded_by_the_connection_window(reactor, network, certificate):
    start_server(reactor, certificate, stream_window=64 * MiB, connection_window=1 * MiB)
    client = open_client(reactor, certificate)

    stream_id = send_with_a_gap(client, os.urandom(6 * MiB))
    network.run(3.0)

    assert 1 * MiB - 2 * KiB <= sent_up_to(client, stream_id) <= 1 * MiB
    assert client._quic._remote_max_data == 1 * MiB


def test_gaps_on_many_streams_share_the_connection_window(reactor, network, certificate):
    start_server(reactor, certificate, stream_window=64 * MiB, connection_window=1 * MiB)
    client = open_client(reactor, certificate)

    streams = [send_with_a_gap(client, os.urandom(512 * KiB)) for _ in range(10)]
    network.run(3.0)

    assert sum(sent_up_to(client, stream_id) for stream_id in streams) <= 1 * MiB


def test_credit_follows_delivered_data(reactor, network, certificate):
    start_server(reactor, certificate, stream_window=16 * MiB, connection_window=256 * KiB)
    client = open_client(reactor, certificate)
    payload = os.urandom(3 * MiB)

    echoed = succeeded(client.request(payload), network, seconds=30.0)

    assert echoed == payload
    assert client._quic._remote_max_data <= 3 * MiB + 256 * KiB
