"""Fixtures shared by the whole suite: users, a temporary data dir, a real broker and
real Celery worker processes (never eager mode)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT / ".." / "shared").resolve()


def pytest_configure(config: pytest.Config) -> None:
    # Test users need no slow password hashing (PBKDF2 costs ~0.5 s per user here).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the repository (real weights and photos); skip when absent."""
    if not (SHARED / "keras_home").is_dir():
        pytest.skip(f"needs ../shared (real ImageNet weights and photos), not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """A Redis broker for the session: the embedded one unless CELERY_BROKER_URL is set."""
    from webapp import embedded_redis

    if not settings.USES_EMBEDDED_REDIS:
        from worker import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
        yield settings.CELERY_BROKER_URL
        return
    socket_path = Path(settings.EMBEDDED_REDIS_SOCKET)
    process = None
    if not embedded_redis.is_up(socket_path):
        socket_path.unlink(missing_ok=True)
        process = embedded_redis.start(socket_path)
    try:
        yield settings.CELERY_BROKER_URL
    finally:
        if process is not None:
            embedded_redis.stop(process)


@pytest.fixture
def data_dir(tmp_path: Path, settings) -> Path:  # noqa: F811 - pytest-django's settings
    path = tmp_path / "graft-data"
    path.mkdir()
    settings.GRAFT_DATA_DIR = path
    settings.MEDIA_ROOT = path / "media"
    return path


def database_url_for_subprocess() -> str:
    """The URL of the test database, for worker processes started by tests."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


class WorkerProcess:
    """A real ``celery -A worker worker`` child process, stopped at teardown."""

    def __init__(self, *, queues: str, env: dict[str, str], log: Path, concurrency: int = 1):
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "worker",
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                "--max-tasks-per-child",
                "1",
                "--hostname",
                self.name,
                "--loglevel",
                "INFO",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.hostname = None

    def wait_ready(self, timeout: float = 60.0) -> None:
        import time

        from worker import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            replies = app.control.ping(timeout=0.5) or []
            for reply in replies:
                for name in reply:
                    if name.startswith(self.name.split("@")[0]):
                        self.hostname = name
                        return
        raise RuntimeError(f"worker did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int | None = None) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, sig or signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def start_worker(broker, tmp_path, settings, django_db_setup, django_db_blocker):
    """Factory: start real worker processes against the test database and broker."""
    workers: list[WorkerProcess] = []

    def start(queues: str = "training,default", concurrency: int = 1, **extra_env) -> WorkerProcess:
        with django_db_blocker.unblock():
            db_url = database_url_for_subprocess()
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "GRAFT_DATA_DIR": str(settings.GRAFT_DATA_DIR),
            "PYTHONUNBUFFERED": "1",
            **{k: str(v) for k, v in extra_env.items()},
        }
        if not settings.USES_EMBEDDED_REDIS:
            env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
        worker = WorkerProcess(
            queues=queues,
            env=env,
            log=tmp_path / f"worker-{len(workers)}.log",
            concurrency=concurrency,
        )
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
