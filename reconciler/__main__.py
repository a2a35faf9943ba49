"""Entry point for ``python -m reconciler``; delegates to the CLI."""

import sys

from reconciler.cli import main

sys.exit(main())
