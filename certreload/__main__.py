"""``python -m certreload``."""

import sys

from certreload.cli import main

sys.exit(main())
