"""Command line: train, evaluate and predict without the web app.

``python -m classifier train DATA_DIR --out VERSION_DIR [options]`` prints one JSON line
per epoch and a final JSON summary; ``evaluate VERSION_DIR DATA_DIR`` prints the metrics as
JSON; ``predict VERSION_DIR IMAGE... [--int8]`` prints one JSON line per image;
``quantize VERSION_DIR DATA_DIR`` adds a checked int8 model to the version and prints its
record. A refused input (any ``ClassifierError``) prints its message on stderr and exits
with status 2; a file that cannot be read or written (a cache folder in the way, a full
disk) prints the system's message and exits with status 1; Ctrl-C exits with status 130,
SIGTERM (``kill``, a container stopping) with 143, both after removing a half-written
version folder.

TensorFlow is imported only by ``train`` and ``quantize``; ``evaluate`` and ``predict`` run
on LiteRT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from classifier.config import TrainConfig
from classifier.errors import ClassifierError

EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
DEFAULTS = TrainConfig()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_unwinds():
            return args.handler(args)
    except (ClassifierError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except _Terminated:
        print(f"error: terminated.{_resume_hint(args)}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"error: interrupted.{_resume_hint(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised like Ctrl-C's KeyboardInterrupt so every cleanup runs."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM raises instead of ending the process on the spot.

    Python's default for SIGTERM is to die at once, without ``finally`` blocks: a version
    being exported stayed behind as a hidden ``.<name>.tmp-*`` folder beside ``--out``.
    The previous handler comes back afterwards (``main`` may run inside another program).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_hint(args: argparse.Namespace) -> str:
    if args.command != "train":
        return ""
    if args.checkpoint_dir is None:
        return " Give train a --checkpoint-dir to be able to resume a run."
    return " Run the same command again to resume after the last finished epoch."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classifier", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a classifier on DATA_DIR/<class>/*")
    train.add_argument("data_dir", type=Path)
    train.add_argument("--out", type=Path, required=True, help="version directory to create")
    train.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    train.add_argument("--image-size", type=int, default=DEFAULTS.image_size)
    train.add_argument("--alpha", type=float, default=DEFAULTS.alpha)
    train.add_argument("--weights", default=DEFAULTS.weights, help="imagenet, none or a .h5 path")
    train.add_argument("--build", choices=("functional", "sequential"), default=DEFAULTS.build)
    train.add_argument(
        "--head-units",
        type=_units,
        default=DEFAULTS.head_units,
        help=f"comma-separated Dense sizes (default: {','.join(map(str, DEFAULTS.head_units))})",
    )
    train.add_argument("--dropout", type=float, default=DEFAULTS.dropout)
    train.add_argument(
        "--fine-tune-layers",
        type=int,
        default=DEFAULTS.fine_tune_layers,
        help="after the frozen stage, train the trunk's top N layers too (default: 0, none)",
    )
    train.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=None,
        help="epochs of fine-tuning (default: --epochs when --fine-tune-layers is given)",
    )
    train.add_argument(
        "--fine-tune-learning-rate", type=float, default=DEFAULTS.fine_tune_learning_rate
    )
    train.add_argument("--augment", action="store_true")
    train.add_argument(
        "--early-stopping", type=int, default=DEFAULTS.early_stopping_patience, metavar="PATIENCE"
    )
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    train.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    train.add_argument("--validation-split", type=float, default=DEFAULTS.validation_split)
    train.add_argument("--no-cache", action="store_true", help="do not use the feature cache")
    train.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="the feature cache (default: $GRAFT_CACHE_DIR, else ~/.cache/graft)",
    )
    train.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save every epoch here; the same command run again resumes after the last one",
    )
    train.add_argument("--seed", type=int, default=DEFAULTS.seed)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="score a version on a labelled folder")
    evaluate.add_argument("version_dir", type=Path)
    evaluate.add_argument("data_dir", type=Path)
    evaluate.add_argument("--batch-size", type=_positive_int, default=32)
    evaluate.set_defaults(handler=_evaluate)

    predict = commands.add_parser("predict", help="classify photos with a version")
    predict.add_argument("version_dir", type=Path)
    predict.add_argument("images", type=Path, nargs="+")
    predict.add_argument("--top-k", type=_positive_int, default=5, help="labels per photo")
    predict.add_argument("--int8", action="store_true", help="use the accepted int8 model")
    predict.set_defaults(handler=_predict)

    quantize = commands.add_parser(
        "quantize", help="add a checked int8 model to a version (calibrated on DATA_DIR)"
    )
    quantize.add_argument("version_dir", type=Path)
    quantize.add_argument("data_dir", type=Path, help="the folder the version was trained on")
    quantize.add_argument("--calibration-images", type=_positive_int, default=100)
    quantize.add_argument("--validation-images", type=_positive_int, default=300)
    quantize.add_argument("--max-accuracy-drop", type=float, default=0.01)
    quantize.add_argument("--force", action="store_true", help="redo an existing record")
    quantize.set_defaults(handler=_quantize)
    return parser


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count or a size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _units(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated whole numbers (none for a head without hidden layers)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 1024,512"
        ) from None


def _train(args: argparse.Namespace) -> int:
    fine_tune_epochs = args.fine_tune_epochs
    if fine_tune_epochs is None:  # as manage.py train: asking for layers means fine-tuning
        fine_tune_epochs = args.epochs if args.fine_tune_layers else DEFAULTS.fine_tune_epochs
    elif fine_tune_epochs and not args.fine_tune_layers:
        print("error: --fine-tune-epochs needs --fine-tune-layers.", file=sys.stderr)
        return EXIT_REFUSED
    try:
        config = TrainConfig(
            image_size=args.image_size,
            alpha=args.alpha,
            weights=args.weights,
            batch_size=args.batch_size,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            head_units=args.head_units,
            dropout=args.dropout,
            build=args.build,
            fine_tune_layers=args.fine_tune_layers,
            fine_tune_epochs=fine_tune_epochs,
            fine_tune_learning_rate=args.fine_tune_learning_rate,
            validation_split=args.validation_split,
            seed=args.seed,
            augment=args.augment,
            early_stopping_patience=args.early_stopping,
            use_feature_cache=not args.no_cache,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.out.exists():
        print(f"error: The version directory {args.out} already exists.", file=sys.stderr)
        return EXIT_REFUSED
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from classifier.train import TrainCallbacks, train

    stdout = sys.stdout

    class PrintEpochs(TrainCallbacks):
        def on_epoch(self, epoch: int, logs: dict[str, Any]) -> None:
            _print_json({"event": "epoch", **logs}, file=stdout)

    # stdout is for JSON lines: what libraries print while training (Keras's download of
    # the ImageNet weights and its progress bar) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        result = train(
            args.data_dir,
            config,
            out_dir=args.out,
            cache_dir=args.cache_dir,
            checkpoint_dir=args.checkpoint_dir,
            callbacks=PrintEpochs(),
        )
    metrics = result.metrics
    _print_json(
        {
            "event": "done",
            "val_accuracy": metrics["accuracy"],
            "val_loss": metrics["loss"],
            "macro_f1": metrics["macro_f1"],
            "seconds": result.seconds,
            "epochs": len(result.history),
            "version_dir": str(result.version_dir) if result.version_dir else None,
            "class_names": result.class_names,
            "train_images": len(result.train_files),
            "val_images": len(result.val_files),
            "rejected": [list(item) for item in result.rejected],
            "fingerprint": result.fingerprint,
            "cache_hit": result.cache_hit,
            "resumed_from_epoch": result.resumed_from_epoch,
        }
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from classifier.evaluate import evaluate_version

    _print_json(evaluate_version(args.version_dir, args.data_dir, batch_size=args.batch_size))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from classifier.errors import InvalidImageError
    from classifier.serving import Predictor

    predictor = Predictor.load(args.version_dir, prefer_int8=args.int8)
    if args.int8 and predictor.precision != "int8":
        print("error: the version has no accepted int8 model; run quantize.", file=sys.stderr)
        return EXIT_REFUSED
    status = 0
    for image in args.images:
        try:
            predictions = predictor.predict(image, top_k=args.top_k)
        except (InvalidImageError, OSError) as exc:
            message = str(exc) if isinstance(exc, InvalidImageError) else f"cannot read: {exc}"
            print(f"error: {image}: {message}", file=sys.stderr)
            _print_json({"image": str(image), "error": message})
            status = EXIT_REFUSED
            continue
        _print_json({"image": str(image), "predictions": predictions})
    return status


def _quantize(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from classifier.quantize import quantize_version

    record = quantize_version(
        args.version_dir,
        args.data_dir,
        calibration_images=args.calibration_images,
        validation_images=args.validation_images,
        max_accuracy_drop=args.max_accuracy_drop,
        force=args.force,
    )
    _print_json(record)
    return 0


def _print_json(data: dict[str, Any], file: TextIO | None = None) -> None:
    print(json.dumps(data, default=_default), file=file or sys.stdout, flush=True)


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
