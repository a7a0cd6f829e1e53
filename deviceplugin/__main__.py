"""`python -m deviceplugin` is `netdp`, for places where the console script is not on PATH."""

import sys

from deviceplugin.cli import main

sys.exit(main())
