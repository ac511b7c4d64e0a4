"""The UDP port a QUIC server listens on, alone or shared by several processes.

One process: ``reactor.listenUDP``. Several worker processes behind one port
(``runtara-core --workers N``): each binds a socket of its own with
``SO_REUSEPORT`` and hands it to its reactor with ``adoptDatagramPort``
(``listenUDP`` has no way to set the option before binding). Linux then
gives each datagram to one of the sockets by a hash of its source and
destination address and port, so a client keeps reaching the same process
as long as its address does not change and no process joins or leaves the
port. Only processes of the same user may share a port this way.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet import abstract
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol

__all__ = ["MAX_DATAGRAM_BYTES", "listen_udp", "reuse_port_supported"]

MAX_DATAGRAM_BYTES = 8192
"""Largest datagram read (QUIC's are at most 1,452 bytes on common paths)."""


def reuse_port_supported() -> bool:
    """Whether this system spreads one UDP port's datagrams over several sockets.

    Linux does (kernel 3.9 and later); other systems either lack
    ``SO_REUSEPORT`` or give every datagram to one socket.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listen_udp(
    reactor: Any, host: str, port: int, protocol: DatagramProtocol, *, reuse_port: bool = False
) -> IListeningPort:
    """Listen on ``host``:``port``; with ``reuse_port``, on a socket other processes may share.

    Raises ``CannotListenError`` when the address cannot be bound.
    """
    if not reuse_port:
        listening: IListeningPort = reactor.listenUDP(
            port, protocol, interface=host, maxPacketSize=MAX_DATAGRAM_BYTES
        )
        return listening
    family = socket.AF_INET6 if abstract.isIPv6Address(host) else socket.AF_INET
    udp_socket = socket.socket(family, socket.SOCK_DGRAM)
    try:
        udp_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        udp_socket.setblocking(False)
        udp_socket.bind((host, port))
        adopted: IListeningPort = reactor.adoptDatagramPort(
            udp_socket.fileno(), family, protocol, MAX_DATAGRAM_BYTES
        )
        return adopted
    except OSError as error:
        raise CannotListenError(host, port, error) from None
    finally:
        # The reactor keeps a duplicate of the descriptor; ours can go.
        udp_socket.close()
