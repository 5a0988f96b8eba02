"""``model.keras`` for a job whose trunk never changed, written without building the trunk.

A job that trains only the head on cached features (frozen trunk, no fine-tuning) exports
a model whose every weight but the head's is the pretrained trunk's, exactly as loaded.
Building MobileNetV2 in Keras and loading its weights costs about 1 s of mostly Python,
and ``model.save`` another 0.5 s; on a job that hit the feature cache that was a third of
its time (and the background build slowed the head's epochs while it ran).

So the first such export of a model keeps its ``model.keras`` in the feature cache as a
*template*; later jobs whose model differs only in the head's weights copy it and write
their head's weights into it. ``model.keras`` is a zip (stored, not compressed) of
``config.json``, ``metadata.json`` and ``model.weights.h5``; only the head's datasets in
the h5 file change, written with h5py, and ``metadata.json``'s ``date_saved``.

What a template is for, the *signature*, is everything that decides ``config.json`` and
the non-head weights: the trunk's cache key (backbone, alpha, image size, weights
identity), the build style, the image size, each head layer's Keras config (units,
activations, seeds, the number of classes), the Keras version, and the source of
``classifier/model.py`` (so a change to how models are built never meets an old
template). Which h5 datasets hold the head is found once, when the template is made, by
matching the head's weights against the saved file, and kept beside it with the
template's sha256, which is checked on every use.

Layout: ``<cache_dir>/models/<cache key>-<signature>.keras`` and ``….json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from classifier.config import TrainConfig
from classifier.errors import ArtifactError
from classifier.files import atomic_write
from classifier.model import head_layer_names

log = logging.getLogger(__name__)

TEMPLATE_FORMAT = 1
WEIGHTS_MEMBER = "model.weights.h5"
METADATA_MEMBER = "metadata.json"


@dataclass(frozen=True)
class Template:
    """A saved ``model.keras`` and where its head's weights are in its h5 file."""

    path: Path
    sha256: str
    # head layer name -> the h5 dataset of each of its weights, in get_weights() order
    datasets: dict[str, list[str]]


def template_paths(
    cache_dir: str | Path, key: str, head: keras.Model, config: TrainConfig
) -> tuple[Path, Path]:
    """(template file, its index) for a model with ``head`` on the trunk of cache ``key``."""
    stem = f"{key}-{_signature(key, head, config)}"
    folder = Path(cache_dir) / "models"
    return folder / f"{stem}.keras", folder / f"{stem}.json"


def find_template(
    cache_dir: str | Path, key: str, head: keras.Model, config: TrainConfig
) -> Template | None:
    """The template for this model if one is cached and its index reads, else None."""
    path, index = template_paths(cache_dir, key, head, config)
    if not path.is_file() or not index.is_file():
        return None
    try:
        entry = json.loads(index.read_text())
        datasets = {str(k): [str(d) for d in v] for k, v in entry["datasets"].items()}
        return Template(path=path, sha256=str(entry["sha256"]), datasets=datasets)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("Ignoring the unreadable model template index %s: %s", index, exc)
        return None


def save_template(
    cache_dir: str | Path,
    key: str,
    head: keras.Model,
    config: TrainConfig,
    model_keras: Path,
) -> Path | None:
    """Keep ``model_keras`` (just saved from the full model, whose head is ``head``'s
    weights) as the template for its signature; None when it cannot be (logged, never
    raised: a job must not fail for the sake of the next one's speed)."""
    path, index = template_paths(cache_dir, key, head, config)
    if path.is_file() and index.is_file():
        return path
    try:
        content = model_keras.read_bytes()
        datasets = _locate_head(content, head, config)
        _keep(model_keras, path, content)
        entry = {
            "format": TEMPLATE_FORMAT,
            "sha256": hashlib.sha256(content).hexdigest(),
            "datasets": datasets,
        }
        atomic_write(index, json.dumps(entry, indent=2).encode())
    except (OSError, ValueError, KeyError, ArtifactError) as exc:
        log.warning("No model template kept for the next job: %s", exc)
        return None
    return path


def assemble(template: Template, head: keras.Model, config: TrainConfig) -> bytes:
    """``model.keras`` of the full model with ``head``'s weights, from ``template``.

    Raises:
        ArtifactError: the template file changed since it was made, or does not hold the
            head's datasets in the head's shapes (the caller saves the model instead).
    """
    content = template.path.read_bytes()
    if hashlib.sha256(content).hexdigest() != template.sha256:
        raise ArtifactError(f"The model template {template.path} is damaged (sha256).")
    import h5py

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    if WEIGHTS_MEMBER not in members or METADATA_MEMBER not in members:
        raise ArtifactError(f"The model template {template.path} is not a .keras file.")
    weights = io.BytesIO(members[WEIGHTS_MEMBER])
    with h5py.File(weights, "r+") as h5:
        for name in head_layer_names(config):
            values = head.get_layer(name).get_weights()
            paths = template.datasets.get(name, [])
            if len(paths) != len(values):
                raise ArtifactError(f"The model template has no weights for layer {name}.")
            for dataset, value in zip(paths, values, strict=True):
                if dataset not in h5 or h5[dataset].shape != value.shape:
                    raise ArtifactError(f"The model template's {dataset} does not fit {name}.")
                h5[dataset][...] = value
    members[WEIGHTS_MEMBER] = weights.getvalue()
    metadata = json.loads(members[METADATA_MEMBER])
    metadata["date_saved"] = time.strftime("%Y-%m-%d@%H:%M:%S")  # as Keras writes it
    members[METADATA_MEMBER] = json.dumps(metadata).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:  # stored, like keras.saving
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _keep(source: Path, path: Path, content: bytes) -> None:
    """Put ``content`` (``source``'s bytes) at ``path``: a hard link to ``source`` where
    the file system allows (no copy; version files are never rewritten, and the sha256
    check would catch one that was), else an atomic copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    link = path.with_name(f".{path.name}.link-{os.getpid()}")
    try:
        link.unlink(missing_ok=True)
        os.link(source, link)
        os.replace(link, path)
    except OSError:
        link.unlink(missing_ok=True)
        atomic_write(path, content)


def _signature(key: str, head: keras.Model, config: TrainConfig) -> str:
    from classifier import model as model_module

    layers = [head.get_layer(name).get_config() for name in head_layer_names(config)]
    identity = {
        "format": TEMPLATE_FORMAT,
        "trunk": key,
        "build": config.build,
        "image_size": int(config.image_size),
        "head": layers,
        "keras": keras.__version__,
        "model_code": hashlib.sha256(Path(model_module.__file__).read_bytes()).hexdigest(),
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _locate_head(content: bytes, head: keras.Model, config: TrainConfig) -> dict[str, list[str]]:
    """For each head layer, the h5 datasets equal to its weights (each exactly one).

    Raises:
        ArtifactError: a weight matches no dataset or several.
    """
    import h5py

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        weights = archive.read(WEIGHTS_MEMBER)
    head_weights = {name: head.get_layer(name).get_weights() for name in head_layer_names(config)}
    wanted = {value.shape for values in head_weights.values() for value in values}
    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    with h5py.File(io.BytesIO(weights), "r") as h5:

        def visit(name: str, item: object) -> None:
            if isinstance(item, h5py.Dataset) and item.shape in wanted:
                by_shape.setdefault(item.shape, []).append((name, item[()]))

        h5.visititems(visit)
    located: dict[str, list[str]] = {}
    for name, values in head_weights.items():
        paths = []
        for value in values:
            candidates = by_shape.get(value.shape, [])
            matches = [path for path, saved in candidates if np.array_equal(saved, value)]
            if len(matches) != 1:
                raise ArtifactError(
                    f"{len(matches)} datasets of the saved model hold {name}'s weights."
                )
            paths.append(matches[0])
        located[name] = paths
    return located
