"""Serving speed of one exported version: Keras (predict, predict_on_batch) vs LiteRT.

Usage: python bench/serve_bench.py VERSION_DIR [--runs 200] [--batch 32] [--threads N]

Prints single-image latency (p50/p99 over --runs calls, after a warm-up) and batch
throughput (images/s) for Keras ``model.predict``, Keras ``predict_on_batch`` and LiteRT
through ``classifier.serving.Predictor`` (raw pixels, and end to end from JPEG bytes; and
the version's int8 model when it has an accepted one), then the ratios. Figures only;
nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classifier.serving import Predictor  # noqa: E402


def latencies_ms(call: Callable[[], object], runs: int, warmup: int = 5) -> np.ndarray:
    for _ in range(warmup):
        call()
    out = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        call()
        out[i] = (time.perf_counter() - start) * 1000
    return out


def throughput(call: Callable[[], object], images: int, repeats: int) -> float:
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return images * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="batches per throughput figure")
    parser.add_argument("--threads", type=int, default=None, help="LiteRT threads (all cores)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    predictor = Predictor.load(args.version_dir, num_threads=args.threads)
    litert_load_s = time.perf_counter() - start
    size = predictor.image_size
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    jpeg_bytes = jpeg.getvalue()

    rows: dict[str, dict[str, float]] = {}

    def record(name: str, single: Callable[[], object], batched: Callable[[], object]) -> None:
        lat = latencies_ms(single, args.runs)
        rows[name] = {
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "batch_images_per_s": throughput(batched, args.batch, args.repeats),
        }
        print(
            f"{name:<28} p50 {rows[name]['p50_ms']:7.2f} ms  p99 {rows[name]['p99_ms']:7.2f} ms"
            f"  batch {args.batch}: {rows[name]['batch_images_per_s']:7.1f} images/s",
            flush=True,
        )

    print(
        f"version {args.version_dir} ({size}x{size}, {len(predictor.labels)} classes), "
        f"{os.cpu_count()} CPUs, {args.runs} runs; LiteRT load {litert_load_s * 1000:.0f} ms",
        flush=True,
    )
    record(
        "litert predict_array",
        lambda: predictor.predict_array(one),
        lambda: predictor.predict_array(batch),
    )
    record(
        "litert predict(JPEG 320x240)",
        lambda: predictor.predict(jpeg_bytes),
        lambda: predictor.predict_many([jpeg_bytes] * args.batch),
    )
    int8 = Predictor.load(args.version_dir, num_threads=args.threads, prefer_int8=True)
    if int8.precision == "int8":
        record(
            "litert int8 predict_array",
            lambda: int8.predict_array(one),
            lambda: int8.predict_array(batch),
        )
    else:
        print("(no accepted int8 model in this version: python -m classifier quantize)")

    start = time.perf_counter()
    import keras  # noqa: PLC0415 - imported late so the LiteRT figures come from a light process

    model = keras.saving.load_model(args.version_dir / "model.keras")
    keras_load_s = time.perf_counter() - start
    print(f"keras import + load {keras_load_s:.1f} s", flush=True)
    one_f, batch_f = one.astype(np.float32), batch.astype(np.float32)
    record(
        "keras predict_on_batch",
        lambda: model.predict_on_batch(one_f),
        lambda: model.predict_on_batch(batch_f),
    )
    record(
        "keras predict",
        lambda: model.predict(one_f, verbose=0),
        lambda: model.predict(batch_f, batch_size=args.batch, verbose=0),
    )

    lite = rows["litert predict_array"]
    ratios = {
        f"{name} / litert": {
            "p50_latency": rows[name]["p50_ms"] / lite["p50_ms"],
            "batch_throughput": lite["batch_images_per_s"] / rows[name]["batch_images_per_s"],
        }
        for name in ("keras predict_on_batch", "keras predict")
    }
    for name, ratio in ratios.items():
        print(
            f"{name:<36} latency x{ratio['p50_latency']:.1f}, "
            f"LiteRT batch throughput x{ratio['batch_throughput']:.1f}"
        )
    summary = {
        "rows": rows,
        "ratios": ratios,
        "litert_load_s": litert_load_s,
        "keras_load_s": keras_load_s,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
