"""Settings come from the environment; bad values fail loudly, naming the variable."""

from __future__ import annotations

import runpy
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from classifier.cpu import int8_dot_product

SETTINGS = Path(__file__).resolve().parents[2] / "webapp" / "settings.py"
GRAFT_VARS = [
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "GRAFT_DATA_DIR",
    "GRAFT_PORT",
    "GRAFT_MAX_IMAGE_MB",
    "GRAFT_TRAINING_TIME_LIMIT",
    "LOG_LEVEL",
    "GRAFT_HOST",
    "GRAFT_SECURE_COOKIES",
    "GRAFT_LOGIN_FAILURE_LIMIT",
    "GRAFT_LOGIN_COOLOFF_MINUTES",
    "GRAFT_INT8",
]


@pytest.fixture
def load(monkeypatch, tmp_path):
    def load(**env: str) -> dict:
        for name in GRAFT_VARS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("GRAFT_VAR_DIR", str(tmp_path / "var"))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(SETTINGS))

    return load


def test_it_has_working_one_machine_defaults(load, tmp_path):
    s = load()
    assert s["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert s["DATABASES"]["default"]["NAME"] == str(tmp_path / "var" / "graft.sqlite3")
    assert s["CELERY_BROKER_URL"] == f"redis+socket://{tmp_path / 'var' / 'run' / 'redis.sock'}"
    assert s["USES_EMBEDDED_REDIS"] is True
    assert s["GRAFT_DATA_DIR"] == tmp_path / "var" / "data"
    assert s["DEBUG"] is True
    assert s["GRAFT_PORT"] == 8000


def test_it_generates_a_secret_key_once_and_keeps_it(load, tmp_path):
    first = load()["SECRET_KEY"]
    second = load()["SECRET_KEY"]
    assert len(first) >= 50
    assert first == second
    assert (tmp_path / "var" / "secret_key").read_text() == first
    assert (tmp_path / "var" / "secret_key").stat().st_mode & 0o077 == 0


def test_it_names_graft_var_dir_when_the_secret_key_cannot_be_kept_there(load, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(ImproperlyConfigured, match="GRAFT_VAR_DIR"):
        load(GRAFT_VAR_DIR=str(tmp_path / "a-file" / "var"))
    assert load(GRAFT_VAR_DIR=str(tmp_path / "a-file" / "var"), SECRET_KEY="k" * 60)


def test_it_reads_the_scale_out_configuration(load, tmp_path):
    s = load(
        DATABASE_URL="postgres://graft:pw@db.internal:5433/graft",
        CELERY_BROKER_URL="redis://queue.internal:6379/2",
        SECRET_KEY="k" * 60,
        DEBUG="false",
        ALLOWED_HOSTS="graft.example.com, .internal",
        GRAFT_DATA_DIR=str(tmp_path / "shared-storage"),
    )
    db = s["DATABASES"]["default"]
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["HOST"], db["PORT"], db["NAME"], db["USER"]) == (
        "db.internal",
        5433,
        "graft",
        "graft",
    )
    assert s["CELERY_BROKER_URL"] == "redis://queue.internal:6379/2"
    assert s["CELERY_RESULT_BACKEND"] == "redis://queue.internal:6379/2"
    assert s["USES_EMBEDDED_REDIS"] is False
    assert s["SECRET_KEY"] == "k" * 60
    assert s["DEBUG"] is False
    assert s["ALLOWED_HOSTS"] == ["graft.example.com", ".internal"]
    assert s["GRAFT_DATA_DIR"] == tmp_path / "shared-storage"


def test_it_takes_an_empty_broker_url_as_unset(load, tmp_path):
    # An empty CELERY_BROKER_URL (e.g. `CELERY_BROKER_URL=` in an env file) made Celery fall
    # back to AMQP on localhost, while make run started no Redis.
    s = load(CELERY_BROKER_URL="", CELERY_RESULT_BACKEND="")
    assert s["USES_EMBEDDED_REDIS"] is True
    assert s["CELERY_BROKER_URL"] == f"redis+socket://{tmp_path / 'var' / 'run' / 'redis.sock'}"
    assert s["CELERY_RESULT_BACKEND"] == s["CELERY_BROKER_URL"]


def test_it_keeps_the_visibility_timeout_above_the_longest_job(load):
    s = load(GRAFT_TRAINING_TIME_LIMIT="7200")
    assert s["CELERY_TASK_TIME_LIMIT"] > 7200
    assert s["CELERY_BROKER_TRANSPORT_OPTIONS"]["visibility_timeout"] > s["CELERY_TASK_TIME_LIMIT"]


def test_it_accepts_requests_for_the_address_make_run_listens_on(load):
    # make run prints http://GRAFT_HOST:GRAFT_PORT/; that URL must not answer 400.
    assert "192.168.1.5" in load(GRAFT_HOST="192.168.1.5")["ALLOWED_HOSTS"]
    assert "[fd00::5]" in load(GRAFT_HOST="fd00::5")["ALLOWED_HOSTS"]
    assert load(GRAFT_HOST="0.0.0.0")["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]
    assert load(GRAFT_HOST="192.168.1.5", ALLOWED_HOSTS="graft.lan")["ALLOWED_HOSTS"] == [
        "graft.lan"
    ]


def test_it_marks_cookies_secure_only_when_asked(load):
    # Off by default: make run serves plain http://, where a Secure cookie is never sent back.
    s = load()
    assert (s["SESSION_COOKIE_SECURE"], s["CSRF_COOKIE_SECURE"]) == (False, False)
    s = load(GRAFT_SECURE_COOKIES="true")
    assert (s["SESSION_COOKIE_SECURE"], s["CSRF_COOKIE_SECURE"]) == (True, True)


def test_it_locks_out_a_username_and_address_after_failed_logins(load):
    s = load()
    assert s["AXES_FAILURE_LIMIT"] == 5
    assert s["AXES_COOLOFF_TIME"] == timedelta(minutes=15)
    assert s["AXES_LOCKOUT_PARAMETERS"] == [["username", "ip_address"]]
    assert s["AUTHENTICATION_BACKENDS"][0] == "axes.backends.AxesStandaloneBackend"
    s = load(GRAFT_LOGIN_FAILURE_LIMIT="10", GRAFT_LOGIN_COOLOFF_MINUTES="60")
    assert (s["AXES_FAILURE_LIMIT"], s["AXES_COOLOFF_TIME"]) == (10, timedelta(hours=1))


def test_it_takes_the_log_level_in_any_case(load):
    # gunicorn.conf.py lower-cases LOG_LEVEL for gunicorn, so "info" must work here too.
    assert load(LOG_LEVEL="info")["LOGGING"]["root"]["level"] == "INFO"
    assert load(LOG_LEVEL=" Warning ")["LOGGING"]["root"]["level"] == "WARNING"


VNNI_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"
AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd asimdhp asimddp\n"


def test_int8_dot_products_are_read_from_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr("classifier.cpu.CPUINFO", tmp_path / "missing")  # not Linux
    assert int8_dot_product() is None
    assert int8_dot_product(VNNI_CPUINFO) == "avx512_vnni"
    assert int8_dot_product(ARM_CPUINFO) == "asimddp"
    assert int8_dot_product(AVX2_CPUINFO) is None
    assert int8_dot_product("") is None


@pytest.mark.parametrize(
    ("cpuinfo", "value", "served", "auto"),
    [
        (VNNI_CPUINFO, None, True, "this CPU has int8 dot products (avx512_vnni)"),
        (AVX2_CPUINFO, None, False, "this CPU has no int8 dot-product instructions"),
        (VNNI_CPUINFO, " Auto ", True, "this CPU has int8 dot products (avx512_vnni)"),
        (VNNI_CPUINFO, "false", False, None),
        (AVX2_CPUINFO, "on", True, None),
    ],
)
def test_int8_serving_is_auto_by_default_and_follows_the_cpu(
    load, monkeypatch, tmp_path, cpuinfo, value, served, auto
):
    # Only CPUs with int8 dot products run the int8 model faster (classifier.cpu).
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    monkeypatch.setattr("classifier.cpu.CPUINFO", path)
    s = load(**({} if value is None else {"GRAFT_INT8": value}))
    assert (s["GRAFT_INT8"], s["GRAFT_INT8_AUTO"]) == (served, auto)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRAFT_PORT", "eighty"),
        ("GRAFT_PORT", "70000"),
        ("DEBUG", "maybe"),
        ("GRAFT_SECURE_COOKIES", "https"),
        ("GRAFT_MAX_IMAGE_MB", "0"),
        ("GRAFT_TRAINING_TIME_LIMIT", "1.5h"),
        ("DATABASE_URL", "mysterydb://nowhere"),
        ("LOG_LEVEL", "verbose"),
        ("CELERY_BROKER_URL", "queue.internal:6379"),
        ("GRAFT_LOGIN_FAILURE_LIMIT", "five"),
        ("GRAFT_LOGIN_FAILURE_LIMIT", "0"),
        ("GRAFT_LOGIN_COOLOFF_MINUTES", "15m"),
        ("GRAFT_LOGIN_COOLOFF_MINUTES", "0"),
        ("GRAFT_INT8", "fast"),
    ],
)
def test_it_names_the_variable_with_a_bad_value(load, name, value):
    with pytest.raises(ImproperlyConfigured, match=name):
        load(**{name: value})


def test_it_serves_static_files_in_production_without_collectstatic_or_a_warning(client, settings):
    # gunicorn with DEBUG=false: WhiteNoise warned "No directory at: var/static/" at each
    # worker boot, for a folder nothing ever fills (files come from the apps' folders).
    settings.DEBUG = False
    settings.WHITENOISE_AUTOREFRESH = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        response = client.get("/static/graft/graft.css")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)


@pytest.mark.parametrize("password", ["8417302965", "victor-victor"])
def test_it_refuses_all_digit_passwords_and_ones_like_the_user_name(db, password):
    """Django's four validators, as ``startproject`` writes them; two were missing."""
    from django.contrib.auth.models import User
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        validate_password(password, User(username="victor-victor", email="v@example.com"))
