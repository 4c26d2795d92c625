"""``python -m unlearnkit.cli``: the same as the ``unlearnkit`` command."""

import sys

from . import main

sys.exit(main())
