from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError


@pytest.mark.django_db
def test_it_creates_the_first_admin_once_and_prints_how_to_log_in(monkeypatch):
    monkeypatch.delenv("GRAFT_ADMIN_PASSWORD", raising=False)
    out = StringIO()
    call_command("graft_run", "--no-start", stdout=out)
    admin = User.objects.get()
    assert admin.is_superuser and admin.username == "admin"
    assert "Log in as 'admin' with password" in out.getvalue()
    assert "http://localhost:8000/" in out.getvalue()

    again = StringIO()
    call_command("graft_run", "--no-start", stdout=again)
    assert User.objects.count() == 1
    assert "password" not in again.getvalue().split("existing account")[0].lower()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("int8", "auto", "said"),
    [
        (False, None, "Classifying with: float32 (GRAFT_INT8 is off)."),
        (True, None, "Classifying with: each version's checked int8 copy, float32 until it has "
         "one (GRAFT_INT8 is on)."),
        (True, "this CPU has int8 dot products (avx512_vnni)", "(GRAFT_INT8 is auto: this CPU "
         "has int8 dot products (avx512_vnni))."),
        (False, "this CPU has no int8 dot-product instructions", "Classifying with: float32 "
         "(GRAFT_INT8 is auto: this CPU has no int8 dot-product instructions)."),
    ],
)  # fmt: skip
def test_it_says_which_model_classifies_and_why(settings, int8, auto, said):
    settings.GRAFT_INT8, settings.GRAFT_INT8_AUTO = int8, auto
    out = StringIO()
    call_command("graft_run", "--no-start", stdout=out)
    assert said in out.getvalue()


@pytest.mark.django_db
def test_it_takes_the_admin_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRAFT_ADMIN_USERNAME", "root")
    monkeypatch.setenv("GRAFT_ADMIN_PASSWORD", "s3cret-enough")
    out = StringIO()
    call_command("graft_run", "--no-start", stdout=out)
    assert User.objects.get(username="root").check_password("s3cret-enough")
    assert "s3cret-enough" not in out.getvalue()


@pytest.mark.django_db
def test_it_takes_empty_admin_settings_as_unset(monkeypatch):
    # GRAFT_ADMIN_USERNAME= in an env file stopped the first make run with a ValueError.
    monkeypatch.setenv("GRAFT_ADMIN_USERNAME", "")
    monkeypatch.setenv("GRAFT_ADMIN_PASSWORD", "")
    out = StringIO()
    call_command("graft_run", "--no-start", stdout=out)
    assert User.objects.get().username == "admin"
    assert "Log in as 'admin' with password" in out.getvalue()


@pytest.mark.django_db
def test_it_says_which_host_names_other_machines_may_use_when_it_listens_on_all(settings):
    settings.GRAFT_HOST = "0.0.0.0"
    settings.ALLOWED_HOSTS = ["localhost", "graft.lan"]
    out = StringIO()
    call_command("graft_run", "--no-start", stdout=out)
    assert "ALLOWED_HOSTS" in out.getvalue()
    assert "graft.lan" in out.getvalue()


@pytest.mark.django_db
def test_it_names_a_data_dir_it_cannot_write_before_starting_anything(settings, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    settings.GRAFT_DATA_DIR = tmp_path / "a-file" / "data"
    with pytest.raises(CommandError, match="GRAFT_DATA_DIR"):
        call_command("graft_run", "--no-start", stdout=StringIO())


@pytest.mark.django_db
def test_it_names_graft_port_when_the_port_is_taken_and_starts_nothing(settings, monkeypatch):
    import socket

    import honcho.command

    started = []
    monkeypatch.setattr(honcho.command, "main", started.append)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings.GRAFT_HOST = "127.0.0.1"
        settings.GRAFT_PORT = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"{settings.GRAFT_PORT}.*GRAFT_PORT"):
            call_command("graft_run", stdout=StringIO())
    assert started == []


@pytest.fixture
def started(monkeypatch) -> Iterator[list[dict[str, str]]]:
    """Run graft_run without starting anything: each honcho start records the environment
    its processes would get; the environment, SIGHUP and the directory are restored."""
    import os
    import signal

    import honcho.command

    environ, hangup = dict(os.environ), signal.getsignal(signal.SIGHUP)
    monkeypatch.chdir(Path.cwd())
    calls: list[dict[str, str]] = []
    monkeypatch.setattr(honcho.command, "main", lambda argv: calls.append(dict(os.environ)))
    yield calls
    os.environ.clear()
    os.environ.update(environ)
    signal.signal(signal.SIGHUP, hangup)


@pytest.mark.django_db(transaction=True)
def test_it_gives_runserver_a_bracketed_address_and_prints_a_usable_url_for_ipv6(settings, started):
    # GRAFT_HOST=:: made the Procfile run `runserver :::8000`, which runserver refuses.
    import re
    import socket
    import string

    from django.core.management.commands.runserver import naiveip_re

    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    settings.GRAFT_PORT = port
    for host, url in [("::", f"http://localhost:{port}/"), ("::1", f"http://[::1]:{port}/")]:
        settings.GRAFT_HOST = host
        out = StringIO()
        call_command("graft_run", stdout=out)
        assert url in out.getvalue()
    procfile = (Path(settings.BASE_DIR) / "Procfile").read_text()
    web = next(line for line in procfile.splitlines() if line.startswith("web:"))
    address = re.search(r'runserver "([^"]+)"', web).group(1)  # as the shell expands it:
    addresses = [string.Template(address).substitute(env) for env in started]
    assert addresses == [f"[::]:{port}", f"[::1]:{port}"]
    assert all(re.match(naiveip_re, address) for address in addresses)


@pytest.mark.django_db(transaction=True)
def test_it_turns_debug_off_when_other_machines_can_reach_it(settings, started, monkeypatch):
    # Django's debug pages show settings (CELERY_BROKER_URL with its password, say).
    monkeypatch.delenv("DEBUG", raising=False)
    settings.GRAFT_PORT = 0
    banners = []
    for host in ("127.0.0.1", "0.0.0.0"):
        settings.GRAFT_HOST = host
        out = StringIO()
        call_command("graft_run", stdout=out)
        banners.append(out.getvalue())

    assert [env.get("DEBUG") for env in started] == [None, "false"]
    assert "DEBUG" not in banners[0]
    assert "DEBUG is off" in banners[1]


@pytest.mark.django_db(transaction=True)
def test_it_keeps_an_explicit_debug_on_a_network_address(settings, started, monkeypatch):
    monkeypatch.setenv("DEBUG", "true")
    settings.GRAFT_HOST = "0.0.0.0"
    settings.GRAFT_PORT = 0
    out = StringIO()

    call_command("graft_run", stdout=out)

    assert started[0]["DEBUG"] == "true"
    assert "DEBUG is off" not in out.getvalue()


def test_the_worker_waits_for_the_embedded_redis_before_it_connects(tmp_path, broker, settings):
    from pathlib import Path

    from webapp import embedded_redis

    procfile = (Path(settings.BASE_DIR) / "Procfile").read_text()
    worker = next(line for line in procfile.splitlines() if line.startswith("worker:"))
    assert 'embedded_redis wait "$GRAFT_WAIT_FOR_REDIS" && exec' in worker

    assert embedded_redis.main(["wait", ""]) == 0  # a Redis of your own: nothing to wait for
    assert embedded_redis.main(["wait", str(tmp_path / "nobody.sock"), "0.2"]) == 1
    if settings.USES_EMBEDDED_REDIS:
        assert embedded_redis.main(["wait", str(settings.EMBEDDED_REDIS_SOCKET), "5"]) == 0


def _alive_in_group(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still running (zombies are not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.mark.slow
def test_closing_its_terminal_stops_every_process_it_started(tmp_path):
    """A closed terminal window or a dropped SSH session hangs up `make run`: Redis, the
    worker and the web server must stop with it, not linger and block the next run."""
    import contextlib
    import os
    import pty
    import re
    import select
    import signal
    import socket
    import sys
    import time

    from tests.waiting import wait_for

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "GRAFT_VAR_DIR": str(tmp_path / "var"),
        "GRAFT_PORT": str(port),
        "GRAFT_ADMIN_PASSWORD": "not-printed-here",
    }
    root = Path(__file__).resolve().parents[2]
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        os.chdir(root)
        os.execve(sys.executable, [sys.executable, "manage.py", "graft_run"], env)
    output = b""
    groups: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while b" ready." not in output or len(groups) < 2:
            assert time.monotonic() < deadline, output.decode(errors="replace")[-3000:]
            if select.select([terminal], [], [], 0.5)[0]:
                output += os.read(terminal, 65536)
            groups = [int(n) for n in re.findall(rb"started \(pid=(\d+)\)", output)]
        os.close(terminal)  # hang up
        wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, timeout=60, what="honcho")
        wait_for(
            lambda: not any(_alive_in_group(g) for g in groups), timeout=30, what="its processes"
        )
    finally:
        for group in [pid, *groups]:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
