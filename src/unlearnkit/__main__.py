"""``python -m unlearnkit``: the same as the ``unlearnkit`` command."""

import sys

from .cli import main

sys.exit(main())
