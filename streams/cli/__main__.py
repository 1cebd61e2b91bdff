"""``python -m streams.cli``: the ``stepcare`` command."""

import sys

from streams.cli import main

sys.exit(main())
