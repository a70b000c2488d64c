"""`python -m kallm.cli ...` runs the command line."""

import sys

from kallm.cli import main

sys.exit(main())
