"""runtara-core as a twistd application file, configured by the environment only.

    PYTHONPATH=. twistd -ny runtara.tac --pidfile=

does what ``twistd -n runtara-core`` does without options. A bad value
stops it with one line naming the variable, before anything binds.
"""

import os
import sys

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import ILogObserver

from runtara.config import ConfigError, config_from_env
from runtara.logformat import json_log_observer
from runtara.service import build_service
from runtara.tap import exit_when_start_fails

try:
    config = config_from_env(os.environ)
except ConfigError as error:
    raise SystemExit(f"runtara.tac: {error}") from None

application = service.Application("runtara-core")
if config.log_format == "json":
    application.setComponent(ILogObserver, json_log_observer(sys.stdout))
core = build_service(config, reactor)
exit_when_start_fails(core, reactor)
core.setServiceParent(application)
