"""``python -m stepgraph.training ...``: an alias of the ``stepgraph`` CLI (collect, train, evaluate, bench)."""

import sys

from stepgraph.cli import main

sys.exit(main())
