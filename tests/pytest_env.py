"""Loaded by pytest before Django (``-p tests.pytest_env`` in pyproject.toml).

Gives the test run its own var/ directory, so the SQLite test database and the embedded
Redis socket never collide with a `make run` on the same checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("GRAFT_VAR_DIR", str(ROOT / "var" / "test"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
