"""Scoring a classifier: accuracy, loss, per-class metrics, confusion, confident mistakes.

:func:`evaluate_predictions` is plain numpy over ``(labels, probabilities)`` so training
(on its validation split) and :func:`evaluate_version` (an exported version on any folder
of labelled photos, through the same LiteRT runtime that serves it) report identical
numbers. No TensorFlow here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from classifier.data import scan_dataset
from classifier.errors import DatasetError, InvalidImageError
from classifier.images import SUPPORTED_SUFFIXES
from classifier.serving import Predictor

# Keras's categorical cross-entropy clips probabilities to [EPSILON, 1 - EPSILON].
EPSILON = 1e-7


def evaluate_predictions(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    paths: Sequence[str] | None = None,
    top_wrong: int = 12,
) -> dict[str, Any]:
    """Score predicted probabilities ``probs`` (N, C) against true class indices ``y_true``.

    Returns a JSON-ready dict: ``accuracy``; ``loss`` (mean categorical cross-entropy,
    clipped like Keras's); ``per_class`` {name: precision, recall, f1, support} where a
    class never predicted has precision 0 (not NaN); ``macro_f1`` averaged over the classes
    that occur in ``y_true`` or in the predictions (so evaluating on a subset of classes is
    not dragged down by absent ones); ``confusion_matrix`` (rows = true, columns =
    predicted); ``class_names``; ``num_examples``; and ``most_confident_wrong``, up to
    ``top_wrong`` mistakes {path, true, predicted, confidence}, most confident first.

    Raises:
        ValueError: shapes that do not fit, labels out of range, or no examples.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes or y_true.shape != probs.shape[:1]:
        raise ValueError(
            f"Expected probs (N, {num_classes}) and N labels; got {probs.shape} and {y_true.shape}."
        )
    if len(y_true) == 0:
        raise ValueError("There is nothing to evaluate (no examples).")
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(f"Labels must be class indices in [0, {num_classes}).")
    if paths is not None and len(paths) != len(y_true):
        raise ValueError("paths must have one entry per example.")

    predicted = probs.argmax(axis=1)
    confusion = np.bincount(
        y_true * num_classes + predicted, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    true_positives = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    precision = _safe_divide(true_positives, predicted_count)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted_count > 0)

    normalised = probs / np.maximum(probs.sum(axis=1, keepdims=True), EPSILON)
    true_probs = np.clip(normalised[np.arange(len(y_true)), y_true], EPSILON, 1 - EPSILON)

    return {
        "accuracy": float(np.mean(predicted == y_true)),
        "loss": float(np.mean(-np.log(true_probs))),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "macro_f1": float(f1[present].mean()),
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
        "num_examples": int(len(y_true)),
        "most_confident_wrong": _most_confident_wrong(
            y_true, probs, predicted, class_names, paths, top_wrong
        ),
    }


def evaluate_version(
    version_dir: str | Path, data_dir: str | Path, *, batch_size: int = 32
) -> dict[str, Any]:
    """Evaluate an exported version on every photo under ``data_dir/<class>/``.

    Predicts through :class:`classifier.serving.Predictor` (LiteRT), exactly as served.
    ``data_dir`` may hold any subset of the model's classes, down to a single class folder
    (new photos of one class are a common thing to check). The result is still over *all*
    the model's classes, in its order: the model may answer any of them, so a photo of a
    present class predicted as an absent one must show up in a column of the confusion
    matrix and in that class's precision; absent classes have ``support`` 0, and
    ``macro_f1`` averages only the classes that occur as truth or prediction. Photos that
    cannot be read are skipped and listed under ``rejected`` [{path, reason}] in the
    result, which is otherwise :func:`evaluate_predictions`'s (paths relative to
    ``data_dir``).

    Raises:
        DatasetError: ``data_dir`` is not a folder or has no class folder, a class folder
            is not one of the model's classes (all such folders are named), a class folder
            holds no photo, or no photo is readable.
        ArtifactError: the version is missing files or fails its checksums.
    """
    predictor = Predictor.load(version_dir)
    scan = scan_dataset(data_dir, min_classes=1, min_images_per_class=0, check_images=False)
    unknown = [name for name in scan.class_names if name not in predictor.labels]
    if unknown:
        several = len(unknown) > 1
        raise DatasetError(
            f"The model does not know the class{'es' if several else ''} "
            f"{', '.join(unknown)} (folder{'s' if several else ''} in {data_dir}); "
            f"it knows {', '.join(predictor.labels)}. Rename or remove "
            f"{'those folders' if several else 'that folder'}."
        )
    empty = [name for name, count in scan.counts().items() if count == 0]
    if empty:
        several = len(empty) > 1
        raise DatasetError(
            f"The class folder{'s' if several else ''} {', '.join(empty)} in {data_dir} "
            f"hold{'' if several else 's'} no photos "
            f"({', '.join(sorted(SUPPORTED_SUFFIXES))}); add photos or remove "
            f"{'those folders' if several else 'that folder'}."
        )
    to_model = [predictor.labels.index(name) for name in scan.class_names]

    paths: list[str] = []
    y_true: list[int] = []
    probs: list[np.ndarray] = []
    rejected = [{"path": path, "reason": reason} for path, reason in scan.rejected]
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(scan.items), batch_size):
            chunk = scan.items[start : start + batch_size]
            decoded = pool.map(lambda item: _try_load(predictor, scan.root / item[0]), chunk)
            pixels = []
            for (relpath, label), (array, problem) in zip(chunk, decoded, strict=True):
                if array is None:
                    rejected.append({"path": relpath, "reason": problem or "unreadable"})
                    continue
                pixels.append(array)
                paths.append(relpath)
                y_true.append(to_model[label])
            if pixels:
                probs.append(predictor.predict_array(np.stack(pixels)))
    if not probs:
        raise DatasetError(f"No readable photos in {data_dir}.")
    result = evaluate_predictions(y_true, np.concatenate(probs), predictor.labels, paths=paths)
    result["rejected"] = rejected
    return result


def _try_load(predictor: Predictor, path: Path) -> tuple[np.ndarray | None, str | None]:
    try:
        return predictor.load_pixels(path), None
    except (InvalidImageError, OSError) as exc:
        return None, str(exc)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)
    return out


def _most_confident_wrong(
    y_true: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray,
    class_names: Sequence[str],
    paths: Sequence[str] | None,
    top_wrong: int,
) -> list[dict[str, Any]]:
    wrong = np.flatnonzero(predicted != y_true)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][: max(0, top_wrong)]
    return [
        {
            "path": paths[i] if paths is not None else None,
            "true": class_names[y_true[i]],
            "predicted": class_names[predicted[i]],
            "confidence": float(probs[i, predicted[i]]),
        }
        for i in order
    ]
