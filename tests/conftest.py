"""Shared test set-up: the independent gradient oracle (``tests/oracle.py``) is imported one way,
``from oracle import Oracle``, whatever directory pytest is started from."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
