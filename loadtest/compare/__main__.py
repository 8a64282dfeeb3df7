"""``python -m loadtest.compare``: see :mod:`loadtest.compare`."""

import sys

from loadtest.compare.main import main

sys.exit(main())
