"""``python -m upgp``: the same command line as the ``upgp`` script."""

import sys

from .cli import main

sys.exit(main())
