"""The two naive serving designs that ``bench/serve_load.py`` compares Graft against.

Plain WSGI apps (no Django) served by the same gunicorn settings, answering the same
multipart ``image`` POST with the same JSON shape:

- ``per_request``: loads ``model.keras`` for every request, then ``model.predict`` (what a
  first prototype does);
- ``cached``: loads ``model.keras`` once per process and calls ``model.predict``.

The version directory comes from ``GRAFT_BENCH_VERSION``. Both import TensorFlow.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from classifier.images import load_image

VERSION = Path(os.environ.get("GRAFT_BENCH_VERSION", "."))
LABELS = json.loads((VERSION / "labels.json").read_text()) if VERSION.is_dir() else []
_model: Any = None
_lock = threading.Lock()


def _load() -> Any:
    import keras

    return keras.models.load_model(VERSION / "model.keras", compile=False)


def _cached_model() -> Any:
    global _model
    with _lock:
        if _model is None:
            _model = _load()
    return _model


def _image_from_multipart(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    boundary = environ["CONTENT_TYPE"].split("boundary=", 1)[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="image"' in head:
            return data[: -len(b"\r\n")] if data.endswith(b"\r\n") else data
    raise ValueError("no image field")


def _app(get_model: Callable[[], Any]) -> Callable:
    def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        model = get_model()
        image = _image_from_multipart(environ)
        size = int(model.inputs[0].shape[1])
        probs = model.predict(load_image(image, size)[np.newaxis].astype(np.float32), verbose=0)
        order = np.argsort(-probs[0])[:5]
        body = json.dumps(
            {
                "version": 0,
                "predictions": [
                    {"label": LABELS[i], "confidence": float(probs[0][i])} for i in order
                ],
                "latency_ms": (time.perf_counter() - started) * 1000,
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


per_request = _app(_load)
cached = _app(_cached_model)
