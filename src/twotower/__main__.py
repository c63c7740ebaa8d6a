"""`python -m twotower ...`: the `twotower` command, for environments without the script on PATH."""

import sys

from twotower.cli import main

sys.exit(main())
