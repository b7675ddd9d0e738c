"""``python -m mlops_scoring``: the same as ``mlops-serve``."""

from __future__ import annotations

import sys

from mlops_scoring.cli import main

sys.exit(main())
