"""``python -m recfabric.host.cli``: the ``recfabric`` command."""

import sys

from .main import main

sys.exit(main())
