"""``python -m harness``: the local sandbox's command line (``harness.cli``), run by deploy/sandbox.sh."""

import sys

from harness.cli import main

sys.exit(main())
