"""The ``runtara-core`` twistd plugin.

Every plugin scan imports this file, so it imports nothing of runtara:
``ServiceMaker`` loads ``runtara.tap`` only when twistd uses the plugin.
"""

from twisted.application.service import ServiceMaker

runtara_core = ServiceMaker(
    "runtara-core",
    "runtara.tap",
    "runtara durable-execution server (QUIC + SQLite or PostgreSQL)",
    "runtara-core",
)
