"""``python -m stpp.worker RUN_DIR`` (what torchrun starts on every rank); see :mod:`stpp.worker`."""

import sys

from stpp.worker.main import main

sys.exit(main())
