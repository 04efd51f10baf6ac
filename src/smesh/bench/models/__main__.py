"""``python -m smesh.bench.models MODEL ...``: see :mod:`smesh.bench.models.launch`."""

import sys

from smesh.bench.models.launch import main

sys.exit(main())
