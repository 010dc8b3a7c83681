"""``python -m harmonia`` runs the CLI."""

import sys

from harmonia.cli import main

sys.exit(main())
