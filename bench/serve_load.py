"""Load test of Graft's production server against the two naive serving designs.

Usage: python bench/serve_load.py [--version-dir DIR | --alpha 1.0] [--concurrency 4]
       [--photo PATH] [--duration 10] [--naive-duration 20] [--skip-naive] [--keep-alive]

Starts, one after the other on loopback: Graft under ``gunicorn -c gunicorn.conf.py``
(LiteRT, the real API with token auth and the prediction log; float32, then int8 when the
version has an accepted int8 model), then the two naive designs
from ``bench/naive_apps.py`` under the same gunicorn settings (Keras model loaded per
request; Keras model cached, ``model.predict``). For each: N client threads each POST a
320x240 JPEG of a real photo (multipart ``image``; see :func:`photo`) for the given time,
each request on a new connection (``--keep-alive`` reuses them), then p50/p99 latency,
throughput and the resident memory of each web worker are printed.

Without ``--version-dir`` a version is made once into var/bench/: MobileNetV2 with ImageNet
weights (``KERAS_HOME``, default ``../shared/keras_home`` when present) trained for 5
frozen epochs on ``../shared/datasets/flowers-sample`` and quantized to int8 as Graft does
it (``classifier.quantize``), or, without the sample, an untrained 5-class head (speed does
not depend on what the head learned). When the version has an accepted int8 model, Graft
is also measured serving it (``GRAFT_INT8=on``), in the same run. Figures only; nothing
here asserts on time.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
# As in train_bench.py: the offline Keras cache beside the repository, when there is one
# (inherited by the exporting and naive-server subprocesses).
SHARED_KERAS_HOME = ROOT / ".." / "shared" / "keras_home"
SHARED_SAMPLE = ROOT / ".." / "shared" / "datasets" / "flowers-sample"
if "KERAS_HOME" not in os.environ and SHARED_KERAS_HOME.is_dir():
    os.environ["KERAS_HOME"] = str(SHARED_KERAS_HOME.resolve())
# A worker that has loaded a model is above this; a fresh one (Django only) is below.
WARM_RSS_MB = 75
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
SETUP = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from webapp.models import ModelVersion, Project
from webapp.services import model_version_activate
user = User.objects.create_user("bench", password="x")
project = Project.objects.create(name="Bench", slug="bench")
os.makedirs(os.path.join(os.environ["GRAFT_DATA_DIR"], "models/bench"), exist_ok=True)
os.symlink(sys.argv[1], os.path.join(os.environ["GRAFT_DATA_DIR"], "models/bench/v1"))
import json
metadata = json.load(open(os.path.join(sys.argv[1], "metadata.json")))
version = ModelVersion.objects.create(
    project=project, number=1, directory="models/bench/v1", int8=metadata.get("int8") or {}
)
model_version_activate(version=version)
print(Token.objects.create(user=user).key)
"""


def build_version(out: Path, alpha: float, size: int) -> Path:
    """Export a MobileNetV2(alpha) @ size version with ImageNet weights (once), see export."""
    if out.is_dir():
        return out
    print(f"Exporting MobileNetV2 alpha={alpha} @{size} to {out} ...", flush=True)
    command = [sys.executable, __file__, "--export-to", str(out), "--alpha", str(alpha)]
    subprocess.run([*command, "--image-size", str(size)], check=True, cwd=ROOT)
    return out


def default_version(alpha: float = 1.0, size: int = 224) -> Path:
    """The bench's version under var/bench/, exported on first use (see :func:`export`)."""
    trained = "-flowers" if SHARED_SAMPLE.is_dir() else ""
    out = ROOT / "var" / "bench" / f"mobilenetv2-{alpha}-{size}{trained}"
    return build_version(out, alpha, size)


def export(out: Path, alpha: float, size: int) -> None:
    """Runs in its own process: the only place here that imports TensorFlow.

    With the flower sample at hand the version is trained on it (5 frozen epochs), then
    quantized the way Graft does it (``classifier.quantize``: calibrated on its training
    photos, checked on its validation photos), so the int8 row serves a model whose
    accuracy was measured. Without the sample: an untrained 5-class head and no int8 model
    (speed does not depend on what the head learned).
    """
    sys.path.insert(0, str(ROOT))
    from classifier.config import TrainConfig

    config = TrainConfig(image_size=size, alpha=alpha, weights="imagenet", epochs=5)
    if not SHARED_SAMPLE.is_dir():
        from classifier.export import export_version
        from classifier.model import build_model

        model = build_model(len(LABELS), config)
        export_version(
            model, out, class_names=LABELS, config=config, metrics={}, history=[], dataset={}
        )
        return
    from classifier.quantize import quantize_version
    from classifier.train import train

    with tempfile.TemporaryDirectory() as cache:
        train(SHARED_SAMPLE, config, out_dir=out, cache_dir=cache)
    quantize_version(out, SHARED_SAMPLE)


def int8_line(meta: dict) -> str | None:
    """What the version's int8 record says, or None when it has no accepted int8 model."""
    record = meta.get("int8")
    if not isinstance(record, dict):
        return None
    return (
        f"int8 model: {'accepted' if record.get('accepted') else 'NOT accepted'}; validation "
        f"accuracy int8 {record['int8_accuracy']:.3f} vs float32 {record['float32_accuracy']:.3f}"
        f", top-1 agreement {record['agreement']:.3f} on {record['validation_images']} photos"
    )


def photo(source: Path | None) -> tuple[bytes, str]:
    """The 320x240 JPEG every client sends, and a line saying what it is.

    A real photo when one is at hand (``--photo``, else the first of
    ``../shared/datasets/flowers-sample``): its decode cost is that of an ordinary upload.
    Without one, a smooth synthetic picture. Random-noise pixels, used before, are not what
    users send: a 320x240 noise JPEG is 68 KB against ~29 KB for the photo and takes ~1.3x
    longer to decode (1.54 vs 1.17 ms here).
    """
    if source is None and SHARED_SAMPLE.is_dir():
        source = min(p for p in SHARED_SAMPLE.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if source is not None:
        with Image.open(source) as opened:
            picture = ImageOps.exif_transpose(opened).convert("RGB")
        label = f"photo {source.name}"
    else:
        y, x = np.mgrid[0:240, 0:320]
        pixels = np.stack([x * 255 / 319, y * 255 / 239, (x + y) * 255 / 558], axis=-1)
        picture = Image.fromarray(pixels.astype(np.uint8))
        label = "synthetic gradient"
    buffer = io.BytesIO()
    picture.resize((320, 240), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data, f"320x240 JPEG ({label}, {len(data) // 1024} KB)"


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A gunicorn process group on loopback, stopped with SIGTERM."""

    def __init__(self, app: str, env: dict[str, str], log: Path, root: Path = ROOT) -> None:
        self.port = free_port()
        env = {**env, "GRAFT_BIND": f"127.0.0.1:{self.port}"}
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app],
            cwd=root,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not start in 120 s")

    def worker_rss_mb(self) -> list[float]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = children.read_text().split()
        return [rss_mb(int(pid)) for pid in pids]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def prepare(version: Path, root: Path = ROOT) -> tuple[Path, dict[str, str], str]:
    """A fresh data folder with one project serving ``version``: (folder, server env, token)."""
    tmp = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    (tmp / "var").mkdir()
    env = {
        **os.environ,
        "GRAFT_VAR_DIR": str(tmp / "var"),
        "GRAFT_DATA_DIR": str(tmp / "data"),
        "GRAFT_API_RATE": "off",
        # float32 unless a design asks for int8 (the default, auto, depends on the CPU)
        "GRAFT_INT8": "false",
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "LOG_LEVEL": "WARNING",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GRAFT_BENCH_VERSION": str(version),
    }
    token = subprocess.run(
        [sys.executable, "-c", SETUP, str(version)],
        cwd=root,
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.split()[-1]
    return tmp, env, token


def warm_up(
    server: Server, path: str, body: bytes, ctype: str, headers: dict, concurrency: int
) -> None:
    """Send load until every worker has loaded its model, before the clock starts."""
    for _ in range(120):
        load(server.port, path, body, ctype, headers, concurrency * 2, 0.5)
        if min(server.worker_rss_mb()) > WARM_RSS_MB:
            break


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(
    port: int,
    path: str,
    body: bytes,
    ctype: str,
    headers: dict,
    clients: int,
    seconds: float,
    keep_alive: bool = False,
) -> dict[str, float]:
    """``clients`` threads POST for ``seconds``; latencies of the requests that finished.

    Each request opens its own connection unless ``keep_alive``: like requests arriving
    through a proxy, they spread over the gunicorn workers. (Four long-lived connections
    may all land on one worker and leave the other idle.)
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        mine = []
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            if not keep_alive:
                conn.close()
            conn.request("POST", path, body, {"Content-Type": ctype, **headers})
            response = conn.getresponse()
            data = response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200:
                errors.append(f"{response.status} {data[:200]!r}")
                continue
            mine.append(elapsed)
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    if errors:
        print(f"  {len(errors)} errors, first: {errors[0]}")
    values = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "per_s": len(latencies) / wall,
    }


def report(name: str, figures: dict[str, float], rss: list[float]) -> None:
    print(
        f"{name:<34} {figures['requests']:>6} req  p50 {figures['p50_ms']:8.1f} ms  "
        f"p99 {figures['p99_ms']:8.1f} ms  {figures['per_s']:7.1f} /s  "
        f"worker RSS {', '.join(f'{r:.0f}' for r in rss)} MB",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--photo", type=Path, help="the photo to send (resized to 320x240)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--naive-duration", type=float, default=20.0)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--keep-alive", action="store_true", help="reuse each connection")
    parser.add_argument("--export-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_to:
        return export(args.export_to, args.alpha, args.image_size)

    version = (args.version_dir or default_version(args.alpha, args.image_size)).resolve()
    image, described = photo(args.photo)
    body, ctype = multipart(image)
    tmp, env, token = prepare(version)
    meta = json.loads((version / "metadata.json").read_text())
    print(
        f"Version: {version} (MobileNetV2 alpha={meta['config']['alpha']}, "
        f"{meta['image_size']}px); {described}; {args.concurrency} clients; "
        f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    designs = [("graft, float32 (GRAFT_INT8=false)", "webapp.wsgi:application", args.duration, {})]
    described_int8 = int8_line(meta)
    print(described_int8 or "int8 model: none (run `python -m classifier quantize` on the version)")
    if described_int8 and meta["int8"].get("accepted"):
        designs.append(
            ("graft, int8 (GRAFT_INT8=true)", "webapp.wsgi:application", args.duration,
             {"GRAFT_INT8": "true"})
        )  # fmt: skip
    naive = args.naive_duration
    if not args.skip_naive:
        designs += [
            ("naive: Keras loaded per request", "bench.naive_apps:per_request", naive, {}),
            ("naive: Keras cached, predict()", "bench.naive_apps:cached", naive, {}),
        ]
    for number, (name, app, seconds, extra_env) in enumerate(designs):
        server = Server(app, {**env, **extra_env}, tmp / f"server-{number}.log")
        try:
            is_graft = app.startswith("webapp")
            path = "/api/v1/projects/bench/classify" if is_graft else "/"
            headers = {"Authorization": f"Token {token}"} if is_graft else {}
            warm_up(server, path, body, ctype, headers, args.concurrency)
            figures = load(
                server.port, path, body, ctype, headers, args.concurrency, seconds, args.keep_alive
            )
            report(name, figures, server.worker_rss_mb())
        finally:
            server.stop()


if __name__ == "__main__":
    main()
