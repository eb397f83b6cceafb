"""``python -m seg_uncertainty``: the command line (see cli.py). Needs the plugins folder on PYTHONPATH."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
