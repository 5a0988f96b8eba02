"""classifier.allocator: glibc tuning for per-photo work, unless the user tuned it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from classifier import allocator

ROOT = Path(__file__).resolve().parents[2]
GLIBC = platform.libc_ver()[0] == "glibc"
TUNE = "from classifier import allocator; print(allocator.tune(), allocator.tune())"


def _tune_in_child(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    out = subprocess.run(
        [sys.executable, "-c", TUNE],
        cwd=ROOT,
        env={**env, **extra},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt tuning applies to glibc only")
def test_it_tunes_glibc_once_per_process() -> None:
    assert _tune_in_child() == "True True"


@pytest.mark.parametrize("name", allocator.USER_SETTINGS)
def test_settings_from_the_environment_win(name: str) -> None:
    value = "glibc.malloc.arena_max=4" if name == "GLIBC_TUNABLES" else "4"

    assert _tune_in_child(**{name: value}) == "False False"


def test_it_does_nothing_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_tuned", False)
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    for name in allocator.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)

    assert allocator.tune() is False
