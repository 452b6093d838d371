"""``python -m gofer9p``: same as the ``gofer9p`` console script."""

import sys

from .cli import main

sys.exit(main())
