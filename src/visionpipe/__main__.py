"""`python -m visionpipe`: the `visionpipe` command, for an environment whose scripts folder is
not on PATH."""

import sys

from visionpipe.cli import main

sys.exit(main())
