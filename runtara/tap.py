"""``twistd runtara-core``: command-line options in, one service tree out.

Imported only when twistd runs or describes the ``runtara-core`` plugin, and
kept light: the server's modules load in ``makeService``, after the
configuration has been validated, so ``--help`` and a bad value never import
them.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.copyright import version as twisted_version
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.util import untilConcludes

from runtara import __version__
from runtara.config import SETTINGS, Config, ConfigError, Setting, config_from_env

if TYPE_CHECKING:
    from runtara.service import CoreService

_log = Logger()


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

    def opt_version(self) -> None:
        """Display runtara-core's version and exit."""
        print(
            f"runtara-core {__version__} (Twisted {twisted_version},"
            f" Python {platform.python_version()})"
        )
        sys.exit(0)

    def postOptions(self) -> None:
        """Validate every setting now, so a bad value stops twistd before anything binds.

        A bad value is not a usage error: twistd would print its whole usage
        above the one line that matters. It exits with that line instead
        (``SystemExit``, as ``--help`` does), status 1.
        """
        overrides = {setting.field: self._given(setting) for setting in SETTINGS}
        try:
            self.config = config_from_env(os.environ, **overrides)
        except ConfigError as error:
            raise SystemExit(f"runtara-core: {error}") from None
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
        raise SystemExit(
            "runtara-core: RUNTARA_LOG_FORMAT=json writes to standard output: drop"
            " --logfile/--syslog and redirect standard output instead"
        )
    if not twistd_options.get("nodaemon"):
        raise SystemExit(
            "runtara-core: RUNTARA_LOG_FORMAT=json writes to standard output: run twistd with -n"
        )
    twistd_options["logger"] = JSON_LOGGER


EXIT_START_FAILED = 1
"""twistd's exit status when runtara-core could not start (the reason is logged)."""


def makeService(options: Options) -> service.MultiService:
    """The runtara-core service tree for the configuration ``options`` validated,
    in the shell that reports its start to twistd (``TwistdService``)."""
    from twisted.internet import reactor

    from runtara.service import build_service

    core = build_service(options.config, reactor)
    return TwistdService(core, reactor, getattr(options, "parent", None) or {})


class TwistdService(service.MultiService):
    """``core`` as twistd runs it: a start that fails exits with ``EXIT_START_FAILED``
    and removes twistd's pid file.

    In daemon mode (no ``-n``) the twistd process the operator started waits
    for the daemon to report its start, and exits with 0, or with 1 and the
    reason on stderr. twistd reports success as soon as ``startService``
    returns, before the database is open or the port bound; this service
    takes that report over (twistd's ``statusPipe``) and makes it once the
    start is known. ``twistd_options`` are twistd's own (the plugin options'
    ``parent``).
    """

    def __init__(
        self, core: CoreService, reactor: Any, twistd_options: MutableMapping[str, Any]
    ) -> None:
        super().__init__()
        self.core = core
        self._reactor = reactor
        self._twistd_options = twistd_options
        core.setServiceParent(self)

    def startService(self) -> None:
        exit_when_start_fails(
            self.core,
            self._reactor,
            pidfile=self._twistd_options.get("pidfile") or None,
            status_pipe=self._twistd_options.pop("statusPipe", None),
        )
        super().startService()


def exit_when_start_fails(
    core: CoreService, reactor: Any, *, pidfile: str | None = None, status_pipe: int | None = None
) -> None:
    """A twistd process whose server cannot start (database unreachable, port
    taken, schema too new) stops and exits with ``EXIT_START_FAILED``.

    twistd has no exit status of its own choosing, so the process leaves with
    ``os._exit`` once the reactor has shut down cleanly, after removing
    ``pidfile`` (twistd's own removal never runs then). ``status_pipe`` is
    twistd's daemon status pipe: it gets ``0`` once the server listens, or
    the reason it could not start.
    """

    def started(address: object) -> None:
        if status_pipe is not None:
            _report_to_twistd(status_pipe, b"0")

    def stop(failure: Failure) -> None:
        def leave() -> None:
            if pidfile is not None:
                _remove_own_pidfile(pidfile)
            if status_pipe is not None:
                reason = f"1 {failure.getErrorMessage()}".encode()
                _report_to_twistd(status_pipe, reason[:_STATUS_BYTES])
            os._exit(EXIT_START_FAILED)

        reactor.addSystemEventTrigger("after", "shutdown", leave)
        # The start may fail before the reactor runs (an unusable state directory).
        reactor.callWhenRunning(reactor.stop)

    core.when_ready().addCallbacks(started, stop)


_STATUS_BYTES = 100
"""How much of a report the waiting twistd process reads."""


def _report_to_twistd(status_pipe: int, report: bytes) -> None:
    untilConcludes(os.write, status_pipe, report)
    untilConcludes(os.close, status_pipe)


def _remove_own_pidfile(pidfile: str) -> None:
    """Remove twistd's pid file if it holds this process's pid."""
    path = Path(pidfile)
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError as error:
        _log.warn("cannot remove the pid file {pidfile}: {error}", pidfile=pidfile, error=error)
