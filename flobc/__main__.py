"""``python -m flobc``: the same command line as the ``flobc`` script."""

import sys

from flobc.launch.cli import main

sys.exit(main())
