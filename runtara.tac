"""runtara-core as a twistd application file, configured by the environment only.

    PYTHONPATH=. twistd -ny runtara.tac --pidfile=

does what ``twistd -n runtara-core`` does without options. A bad value
stops it with one line naming the variable, before anything binds.
"""

import os

from twisted.application import service
from twisted.internet import reactor

from runtara.config import ConfigError, config_from_env
from runtara.service import build_service
from runtara.tap import exit_when_start_fails

try:
    config = config_from_env(os.environ)
except ConfigError as error:
    raise SystemExit(f"runtara.tac: {error}") from None

application = service.Application("runtara-core")
core = build_service(config, reactor)
exit_when_start_fails(core, reactor)
core.setServiceParent(application)
