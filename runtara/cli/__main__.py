"""``python -m runtara.cli``: the ``runtara`` command."""

import sys

from runtara.cli import main

sys.exit(main())
