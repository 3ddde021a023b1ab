"""``python -m stpp``: see :mod:`stpp.cli`."""

import sys

from stpp.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
