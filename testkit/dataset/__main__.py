"""python -m testkit.dataset: see testkit.dataset.cli."""

import sys

from testkit.dataset.cli import main

sys.exit(main())
