"""The ``runtara`` command: operators' tools on the server's database.

The contract is ``shared/CLI.md``; ``docs/operators-guide.md`` shows every
command with its output. The command works on the persistence the server
uses (no server needs to run) through ``runtara.admin``.

Choices the contract leaves open:

- The database is resolved exactly as the server resolves it
  (``--database``, else ``RUNTARA_DATABASE_URL``, else the embedded
  ``<state dir>/runtara.db`` of ``RUNTARA_STATE_DIR`` or the default state
  directory).
- Only ``migrate`` creates a SQLite database, and only in an existing
  directory, except for the default embedded database, whose state directory
  it creates (0700) as the server does. Every other command on a SQLite file
  that does not exist fails without creating it; on a database whose schema
  is not current it fails, telling to run ``runtara migrate``.
- ``--database`` and ``--json`` are accepted before or after the command.
- Listings take ``--limit`` (default 50) and ``--offset``; when more items
  follow, a hint line goes to stderr.
- Every failure is one line on stderr starting ``runtara``; exit status 2 for
  what the argument parser can tell, 1 for everything else, 130 when
  interrupted.

The package, by concern:

- ``_commands``: every command, a handler declared with ``@command`` (words,
  help, arguments); adding a command happens there;
- ``_arguments``: argument value types and the arguments commands share;
- ``_parser``: the command line built from the declared commands;
- ``_output``: tables, fields and JSON documents;
- ``_running``: resolving the database, running a command, exit statuses.
"""

from runtara.cli._commands import Command
from runtara.cli._output import Output
from runtara.cli._parser import build_parser
from runtara.cli._running import execute, main, run

__all__ = ["Command", "Output", "build_parser", "execute", "main", "run"]
