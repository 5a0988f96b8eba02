"""Loaded by pytest before Django (``-p tests.pytest_env`` in pyproject.toml).

Gives each test run its own var/ directory (SQLite test database, embedded Redis socket,
secret key), so a `make run` on the same checkout and several test runs at once never
share state. The directory is removed when the run ends.
"""

from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if "GRAFT_VAR_DIR" not in os.environ:
    run_dir = ROOT / "var" / "test" / str(os.getpid())
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRAFT_VAR_DIR"] = str(run_dir)
    atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The same answers on every CPU: tests that serve int8 turn it on themselves
# (GRAFT_INT8's default, auto, depends on the CPU; tests/webapp/test_settings.py).
os.environ.setdefault("GRAFT_INT8", "false")
