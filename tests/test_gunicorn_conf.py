"""gunicorn.conf.py reads the environment; a bad value is named, as in settings."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
NAMES = ["GRAFT_BIND", "GRAFT_HOST", "GRAFT_PORT", "GUNICORN_WORKERS", "GUNICORN_THREADS"]
NAMES += ["GUNICORN_TIMEOUT", "GUNICORN_MAX_REQUESTS"]


@pytest.fixture
def load(monkeypatch):
    def load(**env: str) -> dict:
        for name in NAMES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(CONF))

    return load


def test_it_reads_its_numbers_from_the_environment(load):
    conf = load(GUNICORN_WORKERS="3", GUNICORN_THREADS=" 2", GUNICORN_MAX_REQUESTS="500")
    assert (conf["workers"], conf["threads"], conf["max_requests"]) == (3, 2, 500)
    assert load()["bind"] == ["127.0.0.1:8000"]


@pytest.mark.parametrize(
    "name", ["GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_TIMEOUT", "GUNICORN_MAX_REQUESTS"]
)
def test_it_names_the_variable_with_a_bad_number(load, name):
    with pytest.raises(ValueError, match=f"{name} must be an integer, got 'four'"):
        load(**{name: "four"})


def test_it_brackets_an_ipv6_graft_host_in_the_address_it_binds(load):
    assert load(GRAFT_HOST="::", GRAFT_PORT="9000")["bind"] == ["[::]:9000"]
    assert load(GRAFT_HOST="[fd00::5]")["bind"] == ["[fd00::5]:8000"]
    assert load(GRAFT_HOST="0.0.0.0")["bind"] == ["0.0.0.0:8000"]
