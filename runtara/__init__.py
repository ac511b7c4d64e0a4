"""runtara: a durable execution engine on Twisted."""

__version__ = "0.1.0"
