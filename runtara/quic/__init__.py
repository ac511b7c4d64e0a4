"""QUIC transport: aioquic sans-IO connections driven by Twisted datagram protocols."""
