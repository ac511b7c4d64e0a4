"""``twistd runtara-core``: command-line options in, one service tree out.

Imported only when twistd runs or describes the ``runtara-core`` plugin, and
kept light: the server's modules load in ``makeService``, after the
configuration has been validated, so ``--help`` and a bad value never import
them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.python import usage

from runtara.config import SETTINGS, Config, ConfigError, Setting, config_from_env

if TYPE_CHECKING:
    from twisted.application.service import MultiService

    from runtara.service import CoreService


def _option_parameters() -> list[list[str | None]]:
    """One ``--option VALUE`` per valued setting; None means "not given, use the environment"."""
    return [
        [setting.option, None, None, _help(setting)] for setting in SETTINGS if not setting.flag
    ]


def _option_flags() -> list[list[str | None]]:
    """One ``--option`` per switch; absent means "use the environment"."""
    return [[setting.option, None, _help(setting)] for setting in SETTINGS if setting.flag]


def _help(setting: Setting) -> str:
    return f"{setting.help} [{setting.variable}; default: {setting.default}]"


class Options(usage.Options):
    """Options of ``twistd runtara-core``; each one overrides its environment variable."""

    synopsis = "[options]"
    longdesc = (
        "Runs runtara-core, the durable-execution server, over QUIC. Every option"
        " can also be given by the environment variable named in its help; an option"
        " wins over its variable, and an empty value counts as not given."
    )
    optParameters = _option_parameters()
    optFlags = _option_flags()

    config: Config
    """The validated configuration, set by ``postOptions``."""

    def postOptions(self) -> None:
        """Validate every setting now, so a bad value stops twistd before anything binds."""
        overrides = {setting.field: self._given(setting) for setting in SETTINGS}
        try:
            self.config = config_from_env(os.environ, **overrides)
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None
        if self.config.log_format == "json" and self.parent is not None:
            log_json_to_stdout(self.parent)

    def _given(self, setting: Setting) -> object:
        """The option's value; None when not given (a switch not passed is not "false")."""
        value = self[setting.option]
        if setting.flag:
            return True if value else None
        return value


JSON_LOGGER = "runtara.logformat.json_to_stdout"
"""The ``twistd --logger`` that ``RUNTARA_LOG_FORMAT=json`` selects."""


def log_json_to_stdout(twistd_options: usage.Options) -> None:
    """Make twistd log one JSON object per line to standard output.

    An explicit ``--logger`` wins. JSON goes to standard output only, so it
    needs ``-n`` (a daemon has no standard output) and no ``--logfile`` or
    ``--syslog``, which would otherwise be silently ignored.
    """
    if twistd_options.get("logger"):
        return
    if twistd_options.get("logfile") or twistd_options.get("syslog"):
        raise usage.UsageError(
            "RUNTARA_LOG_FORMAT=json writes to standard output: drop --logfile/--syslog"
            " and redirect standard output instead"
        )
    if not twistd_options.get("nodaemon"):
        raise usage.UsageError(
            "RUNTARA_LOG_FORMAT=json writes to standard output: run twistd with -n"
        )
    twistd_options["logger"] = JSON_LOGGER


EXIT_START_FAILED = 1
"""twistd's exit status when runtara-core could not start (the reason is logged)."""


def makeService(options: Options) -> MultiService:
    """The runtara-core service tree for the configuration ``options`` validated."""
    from twisted.internet import reactor

    from runtara.service import build_service

    core = build_service(options.config, reactor)
    exit_when_start_fails(core, reactor)
    return core


def exit_when_start_fails(core: CoreService, reactor: Any) -> None:
    """A twistd process whose server cannot start (database unreachable, port
    taken, schema too new) stops and exits with ``EXIT_START_FAILED``.

    twistd has no exit status of its own choosing, so the process leaves with
    ``os._exit`` once the reactor has shut down cleanly.
    """

    def stop(failure: object) -> None:
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, EXIT_START_FAILED)
        reactor.stop()

    core.when_ready().addErrback(stop)
