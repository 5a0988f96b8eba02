"""Graft's production server from two checkouts, side by side, under the same load.

Usage: python bench/serve_ab.py BASELINE_CHECKOUT [--rounds 6] [--seconds 8]
       [--concurrency 4] [--version-dir DIR] [--photo PATH]

For a change to serving: ``git worktree add /tmp/base main~3`` (any earlier commit), then
``python bench/serve_ab.py /tmp/base``. Both servers (``gunicorn -c gunicorn.conf.py
webapp.wsgi`` started in each checkout, with this Python environment and the same model
version; see ``serve_load.py``) are up at once on loopback, and the load of
``serve_load.py`` (N clients POSTing the same 320x240 JPEG to the classify API) alternates
between them, one round of ``--seconds`` each, ``--rounds`` times. On a shared virtual
machine whose speed drifts by 20-30 % within an hour, this compares the two within the
same minutes; separate runs of ``serve_load.py`` do not. Prints each checkout's mean
classifications/s (and range over the rounds), mean p50 and p99, the RSS of each web worker
at the end, and the ratio. Figures only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import (  # noqa: E402
    ROOT,
    Server,
    default_version,
    load,
    multipart,
    photo,
    prepare,
    warm_up,
)

PATH = "/api/v1/projects/bench/classify"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="another checkout of Graft")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--version-dir", type=Path)
    parser.add_argument("--photo", type=Path, help="the photo to send (resized to 320x240)")
    args = parser.parse_args(argv)
    baseline = args.baseline.resolve()
    if not (baseline / "gunicorn.conf.py").is_file():
        parser.error(f"{baseline} is not a checkout of Graft (no gunicorn.conf.py)")

    version = (args.version_dir or default_version()).resolve()
    body, ctype = multipart(photo(args.photo)[0])
    trees = {"baseline": baseline, "this checkout": ROOT}
    servers: dict[str, tuple[Server, dict[str, str]]] = {}
    try:
        for name, tree in trees.items():
            tmp, env, token = prepare(version, root=tree)
            server = Server("webapp.wsgi:application", env, tmp / "server.log", root=tree)
            headers = {"Authorization": f"Token {token}"}
            servers[name] = (server, headers)
            warm_up(server, PATH, body, ctype, headers, args.concurrency)
        print(
            f"version {version}; baseline {baseline}; {args.rounds} rounds of "
            f"{args.seconds:g} s each, {args.concurrency} clients, {os.cpu_count()} CPUs",
            flush=True,
        )
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (server, headers) in servers.items():
                rounds[name].append(
                    load(server.port, PATH, body, ctype, headers, args.concurrency, args.seconds)
                )
        summary = {}
        for name, (server, _) in servers.items():
            per_s = [r["per_s"] for r in rounds[name]]
            summary[name] = {
                "per_s": float(np.mean(per_s)),
                "p50_ms": float(np.mean([r["p50_ms"] for r in rounds[name]])),
                "p99_ms": float(np.mean([r["p99_ms"] for r in rounds[name]])),
            }
            rss = ", ".join(f"{mb:.0f}" for mb in server.worker_rss_mb())
            print(
                f"{name:<14} {summary[name]['per_s']:6.1f} /s ({min(per_s):.0f}-{max(per_s):.0f})"
                f"  p50 {summary[name]['p50_ms']:6.1f} ms  p99 {summary[name]['p99_ms']:6.1f} ms"
                f"  worker RSS {rss} MB",
                flush=True,
            )
        ratio = summary["this checkout"]["per_s"] / summary["baseline"]["per_s"]
        print(f"this checkout / baseline: x{ratio:.2f} classifications/s")
        return summary
    finally:
        for server, _ in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
