"""``python -m ttcompile.cli``."""

import sys

from ttcompile.cli.main import main

sys.exit(main())
