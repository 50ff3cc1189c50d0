"""``python -m jobsvc`` is the ``jobsvc`` command."""

import sys

from .cli import main

sys.exit(main())
