"""``make run``: prepare everything, then start Redis, a worker and the web server together."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from webapp.models import int8_setting_said


def _hang_up(signum: int, frame: object) -> None:
    """A closed terminal or a dropped SSH session sends SIGHUP, which honcho does not handle:
    it would die and leave Redis, the worker and the web server running. Stop them as on
    SIGTERM, with output going nowhere (writing to a hung-up terminal fails)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.dup2(devnull, sys.stderr.fileno())
    os.kill(os.getpid(), signal.SIGTERM)


def _is_loopback(address: str) -> bool:
    """Whether only this machine can reach ``address`` (a host name is taken as reachable)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Command(BaseCommand):
    help = "Migrate, create the first admin, then run Redis + a Celery worker + the web server."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-start", action="store_true", help="Prepare only; start nothing.")

    def handle(self, *args: Any, no_start: bool = False, **options: Any) -> None:
        address = settings.GRAFT_HOST.strip("[]")
        # runserver (and a URL) needs an IPv6 address in brackets: [::]:8000, not :::8000.
        host = f"[{address}]" if ":" in address else address
        if not no_start:
            self.check_port_free(host, settings.GRAFT_PORT)
        self.check_writable("GRAFT_VAR_DIR", Path(settings.VAR_DIR))
        self.check_writable("GRAFT_DATA_DIR", Path(settings.GRAFT_DATA_DIR))
        call_command("migrate", interactive=False, verbosity=0)
        login = self.ensure_admin()
        shown_host = "localhost" if address in ("127.0.0.1", "0.0.0.0", "::") else host
        url = f"http://{shown_host}:{settings.GRAFT_PORT}/"
        processes = ["worker", "web"]
        if settings.USES_EMBEDDED_REDIS:
            processes.insert(0, "redis")
        # Django's debug pages show settings (a broker URL with its password, say): only
        # this machine gets them, unless DEBUG is set.
        debug_off = not _is_loopback(address) and "DEBUG" not in os.environ
        self.banner(url, login, processes, debug_off=debug_off)
        if no_start:
            return
        try:
            from honcho.command import main as honcho
        except ImportError:
            raise CommandError(
                "honcho is not installed: run `make run` (it installs everything)."
            ) from None
        env = {
            "GRAFT_PYTHON": sys.executable,
            "GRAFT_HOST": host,
            "GRAFT_PORT": str(settings.GRAFT_PORT),
            "GRAFT_REDIS_SOCKET": str(settings.EMBEDDED_REDIS_SOCKET),
            "GRAFT_WAIT_FOR_REDIS": (
                str(settings.EMBEDDED_REDIS_SOCKET) if settings.USES_EMBEDDED_REDIS else ""
            ),
            "GRAFT_BEAT_SCHEDULE": str(settings.VAR_DIR / "celerybeat-schedule"),
            "PYTHONUNBUFFERED": "1",
        }
        if debug_off:
            env["DEBUG"] = "false"
        procfile = str(settings.BASE_DIR / "Procfile")
        os.environ.update(env)
        os.chdir(settings.BASE_DIR)
        connections.close_all()
        signal.signal(signal.SIGHUP, _hang_up)
        honcho(["--procfile", procfile, "start", *processes])  # exits with its status

    def check_writable(self, name: str, path: Path) -> None:
        """Fail now, naming the variable, rather than at the first upload or job."""
        try:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
        except OSError as exc:
            raise CommandError(f"{name} ({path}) must be a writable directory: {exc}") from None

    def check_port_free(self, host: str, port: int) -> None:
        """Say which setting to change, before Redis and the worker start for nothing."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as runserver does
            try:
                probe.bind((host.strip("[]"), port))
            except OSError as exc:
                raise CommandError(
                    f"Cannot listen on {host}:{port} ({exc.strerror}): is Graft already "
                    "running? Stop what uses the port, or set GRAFT_PORT (and GRAFT_HOST)."
                ) from None

    def ensure_admin(self) -> str:
        """Create the first superuser when there is no user at all; describe how to log in."""
        User = get_user_model()
        username = os.environ.get("GRAFT_ADMIN_USERNAME", "").strip() or "admin"
        if User.objects.exists():
            return "Log in with an existing account (create more in the Admin pages)."
        password = os.environ.get("GRAFT_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(
            username=username, email=os.environ.get("GRAFT_ADMIN_EMAIL", ""), password=password
        )
        if os.environ.get("GRAFT_ADMIN_PASSWORD"):
            return f"Log in as {username!r} with the password from GRAFT_ADMIN_PASSWORD."
        return (
            f"Log in as {username!r} with password {password!r} (shown only this once; "
            f"change it with `.venv/bin/python manage.py changepassword {username}`)."
        )

    def banner(self, url: str, login: str, processes: list[str], *, debug_off: bool) -> None:
        broker = "embedded Redis" if settings.USES_EMBEDDED_REDIS else "CELERY_BROKER_URL"
        lines = [
            "",
            f"  Graft is starting at {url}",
            f"  {login}",
            f"  Processes: {', '.join(processes)} (broker: {broker}); Ctrl-C stops them all.",
            f"  Classifying with: {_precision()}.",
            "",
        ]
        if settings.GRAFT_HOST.strip("[]") in ("0.0.0.0", "::"):
            lines[-1:-1] = [
                "  Other machines must use a host name or address in ALLOWED_HOSTS "
                f"(now: {', '.join(settings.ALLOWED_HOSTS)}).",
            ]
        if debug_off:
            lines[-1:-1] = [
                "  DEBUG is off, since other machines can reach this address (Django's debug "
                "pages show settings); set DEBUG=true to have them anyway.",
            ]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))


def _precision() -> str:
    """Which model serves, and why (GRAFT_INT8; its default, auto, depends on the CPU)."""
    if settings.GRAFT_INT8:
        return f"each version's checked int8 copy, float32 until it has one ({int8_setting_said()})"
    return f"float32 ({int8_setting_said()})"
