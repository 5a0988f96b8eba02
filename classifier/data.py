"""Datasets on disk: one class per sub-folder, scanned, fingerprinted and split.

A dataset is a folder whose sub-folders are the classes (like TensorFlow's
``flower_photos``). :func:`scan_dataset` lists the photos, checks that each one can be read
(unreadable files are reported with a reason, never a crash), and computes a content
fingerprint so a training job can record exactly what it trained on and the feature cache
can recognise data it has already seen. :func:`split_dataset` assigns each file to training
or validation from a hash of its name, so the split is deterministic and adding photos later
never moves an existing photo from one side to the other.

No TensorFlow here: the web process imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from classifier.errors import DatasetError, InvalidImageError
from classifier.files import atomic_write
from classifier.images import SUPPORTED_SUFFIXES, open_image

Item = tuple[str, int]

log = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class DatasetScan:
    """What :func:`scan_dataset` found.

    ``items`` are ``(relative posix path, class index)`` pairs sorted by path; ``rejected``
    are ``(relative path, reason)``; ``files`` maps each readable file's relative path to
    ``(size in bytes, sha256 of its content)``; ``fingerprint`` is a sha256 over the sorted
    relative paths, sizes and content hashes of ``items``.
    """

    root: Path
    class_names: list[str]
    items: list[Item]
    rejected: list[tuple[str, str]]
    total_bytes: int
    fingerprint: str
    files: dict[str, tuple[int, str]] = field(default_factory=dict, repr=False)

    def counts(self) -> dict[str, int]:
        """Readable images per class name (every class present, possibly 0)."""
        counter = Counter(label for _, label in self.items)
        return {name: counter.get(i, 0) for i, name in enumerate(self.class_names)}

    def file_hash(self, relpath: str) -> str:
        """The sha256 of one file's content (as scanned)."""
        return self.files[relpath][1]

    def without(
        self, rejected: list[tuple[str, str]], *, min_images_per_class: int = 1
    ) -> DatasetScan:
        """A copy with ``rejected`` files moved from ``items`` to ``rejected``.

        Used when a file that passed a quick scan turns out to be unreadable later (the
        feature extractor decodes every photo anyway). Raises DatasetError when a class
        falls below ``min_images_per_class``.
        """
        if not rejected:
            _check_counts(self, min_images_per_class)
            return self
        gone = {path for path, _ in rejected}
        items = [item for item in self.items if item[0] not in gone]
        files = {path: info for path, info in self.files.items() if path not in gone}
        scan = replace(
            self,
            items=items,
            rejected=sorted([*self.rejected, *rejected]),
            files=files,
            total_bytes=sum(size for size, _ in files.values()),
            fingerprint=_fingerprint(files),
        )
        _check_counts(scan, min_images_per_class)
        return scan

    def restricted_to(self, relpaths: set[str] | list[str]) -> DatasetScan:
        """A copy that keeps only the readable files in ``relpaths`` (counts not checked)."""
        wanted = set(relpaths)
        files = {path: info for path, info in self.files.items() if path in wanted}
        return replace(
            self,
            items=[item for item in self.items if item[0] in wanted],
            files=files,
            total_bytes=sum(size for size, _ in files.values()),
            fingerprint=_fingerprint(files),
        )


def scan_dataset(
    root: str | Path,
    *,
    min_images_per_class: int = 2,
    check_images: bool = True,
    min_classes: int = 2,
    hash_cache: str | Path | None = None,
) -> DatasetScan:
    """List, hash and (optionally) verify every photo under ``root/<class>/``.

    Class names are the sorted sub-folder names (hidden folders are ignored); files with a
    suffix in ``images.SUPPORTED_SUFFIXES`` are candidates, anything else is ignored. With
    ``check_images`` each file is fully decoded with ``images.open_image`` (in a few
    threads); unreadable files land in ``rejected`` with the reason. Training needs
    ``min_classes=2`` (one class teaches nothing); evaluation passes 1, since scoring a
    version on the photos of a single class is a fair question.

    With ``hash_cache`` (a JSON file, see :func:`hash_cache_path`), a file whose size,
    modification time and inode are unchanged since the last scan is not read again: its
    recorded hash (and image check) is reused, as ``git`` does with its index. A rescan
    after adding a few photos to a large dataset then reads only the new ones. Entries
    written less than two seconds after the file was modified are not trusted (an edit in
    the same clock tick would go unseen). A missing, unreadable or unwritable cache only
    costs the speed-up.

    Raises:
        DatasetError: ``root`` is not a folder, it has fewer than ``min_classes`` class
            folders, or a class has fewer than ``min_images_per_class`` readable images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"The dataset folder {root} does not exist or is not a folder.")
    if not _is_utf8(str(root.resolve())):
        raise DatasetError(
            f"The path of the dataset folder {_shown(str(root.resolve()))} is not valid UTF-8; "
            "rename the folder whose name shows \ufffd."
        )
    class_names = sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    misnamed_classes = [_shown(name) for name in class_names if not _is_utf8(name)]
    if misnamed_classes:
        raise DatasetError(
            f"The class folder name{'s' if len(misnamed_classes) > 1 else ''} "
            f"{', '.join(misnamed_classes)} in {_shown(str(root))} "
            f"{'are' if len(misnamed_classes) > 1 else 'is'} not valid UTF-8; rename "
            f"{'them' if len(misnamed_classes) > 1 else 'it'}."
        )
    if len(class_names) < min_classes:
        raise DatasetError(
            f"The dataset needs at least {min_classes} class folder"
            f"{'s' if min_classes != 1 else ''}; {root} has {len(class_names)}"
            + (f" ({', '.join(class_names)})." if class_names else ".")
            + " Put each class's photos in its own sub-folder."
        )
    candidates: list[Item] = []
    # A name that is not UTF-8 (Latin-1 bytes from an old zip or share) cannot be hashed,
    # stored or handed to TensorFlow: the file is listed as rejected, under a readable name.
    misnamed: list[tuple[str, str]] = []
    for index, name in enumerate(class_names):
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if filename.startswith(".") or path.suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                relpath = path.relative_to(root).as_posix()
                if _is_utf8(relpath):
                    candidates.append((relpath, index))
                else:
                    misnamed.append(
                        (_shown(relpath), "The file name is not valid UTF-8; rename it.")
                    )
    candidates.sort()

    cache = _HashCache(Path(hash_cache)) if hash_cache is not None else None
    inspect = cache.inspect if cache is not None else _inspect
    workers = min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda item: inspect(root, item[0], check_images), candidates))
    if cache is not None:
        cache.save()

    items: list[Item] = []
    rejected: list[tuple[str, str]] = list(misnamed)
    files: dict[str, tuple[int, str]] = {}
    for (relpath, label), (size, digest, problem) in zip(candidates, results, strict=True):
        if problem is not None:
            rejected.append((relpath, problem))
            continue
        items.append((relpath, label))
        files[relpath] = (size, digest)
    rejected.sort()
    scan = DatasetScan(
        root=root,
        class_names=class_names,
        items=items,
        rejected=rejected,
        total_bytes=sum(size for size, _ in files.values()),
        fingerprint=_fingerprint(files),
        files=files,
    )
    _check_counts(scan, min_images_per_class)
    return scan


def split_dataset(
    scan: DatasetScan, validation_split: float = 0.2, seed: int = 1337
) -> tuple[list[Item], list[Item]]:
    """Split ``scan.items`` into ``(train, validation)``, deterministically and stably.

    Each file gets a number in [0, 1) from ``sha256(seed, relative path)``; it goes to
    validation when that number is below ``validation_split``. A file's side therefore
    depends only on its own name and the seed: the split is the same on every machine, and
    adding photos never moves an existing photo between training and validation. It is
    stratified in that every class is split on its own with the same fraction; a class
    with at least two images whose hashes all fall above the fraction gets its
    lowest-hash file in validation, so every class is validated (that one file can return
    to training if a later addition brings the class a validation photo of its own).
    """
    if not 0 < validation_split < 1:
        raise ValueError("validation_split must be between 0 and 1")
    by_class: dict[int, list[tuple[float, Item]]] = {}
    for item in scan.items:
        by_class.setdefault(item[1], []).append((_unit_hash(item[0], seed), item))
    train: list[Item] = []
    val: list[Item] = []
    for members in by_class.values():
        chosen = [item for u, item in members if u < validation_split]
        if not chosen and len(members) >= 2:
            chosen = [min(members)[1]]
        picked = set(chosen)
        val.extend(chosen)
        train.extend(item for _, item in members if item not in picked)
    return sorted(train), sorted(val)


def verify_images(root: str | Path, relpaths: list[str]) -> list[tuple[str, str]]:
    """Decode each photo with ``images.open_image`` (a few threads); return the unreadable ones.

    For callers that scanned with ``check_images=False`` and must not meet a broken photo
    halfway through training. Returns ``(relative path, reason)`` pairs in input order.
    """
    root = Path(root)
    workers = min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda relpath: _inspect(root, relpath, True), relpaths))
    return [
        (relpath, problem)
        for relpath, (_, _, problem) in zip(relpaths, results, strict=True)
        if problem is not None
    ]


def hash_cache_path(cache_dir: str | Path, root: str | Path) -> Path:
    """Where the scan hash cache of dataset folder ``root`` lives under ``cache_dir``."""
    key = hashlib.sha256(os.fsencode(Path(root).resolve())).hexdigest()[:24]
    return Path(cache_dir) / "scans" / f"{key}.json"


class _HashCache:
    """``relpath -> (size, mtime_ns, inode, sha256, checked, problem)`` kept in a JSON file."""

    FORMAT = 1
    RACY_NS = 2_000_000_000

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        self.fresh: dict[str, list] = {}
        self.written_ns = 0
        try:
            data = json.loads(path.read_text())
            if data.get("format") == self.FORMAT:
                self.entries = dict(data["entries"])
                self.written_ns = int(data["written_ns"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        self.changed = False

    def inspect(self, root: Path, relpath: str, check_image: bool) -> tuple[int, str, str | None]:
        try:
            stat = os.stat(root / relpath)
        except OSError:
            return _inspect(root, relpath, check_image)
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = self.entries.get(relpath)
        if (
            entry is not None
            and len(entry) == 6
            and entry[:3] == signature
            and stat.st_mtime_ns < self.written_ns - self.RACY_NS
            and (entry[4] or not check_image)
        ):
            self.fresh[relpath] = entry
            return entry[0], entry[3], entry[5]
        size, digest, problem = _inspect(root, relpath, check_image)
        # Kept when the file did not change while it was read, and the answer is about
        # its content (a hash, or a failed image check), never a passing read error.
        if size == signature[0] and (digest or (check_image and size > 0)):
            self.fresh[relpath] = [*signature, digest, check_image or problem is not None, problem]
        self.changed = True
        return size, digest, problem

    def save(self) -> None:
        if not self.changed and set(self.fresh) == set(self.entries):
            return
        document = {"format": self.FORMAT, "written_ns": time.time_ns(), "entries": self.fresh}
        try:
            atomic_write(self.path, json.dumps(document, separators=(",", ":")).encode())
        except OSError as exc:
            log.warning("Could not write the scan hash cache %s: %s", self.path, exc)


def _is_utf8(name: str) -> bool:
    """False for a name read from disk with bytes that are not UTF-8 (surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """``name`` with its undecodable bytes as U+FFFD, safe to print, store and compare."""
    return os.fsencode(name).decode("utf-8", "replace")


def _unit_hash(relpath: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _inspect(root: Path, relpath: str, check_image: bool) -> tuple[int, str, str | None]:
    """Return ``(size, sha256, problem or None)`` for one file; never raises."""
    path = root / relpath
    try:
        data = path.read_bytes()
    except OSError as exc:
        return 0, "", f"The file could not be read: {exc.strerror or exc}"
    if check_image:
        try:
            open_image(data)
        except InvalidImageError as exc:
            return len(data), "", str(exc)
        except Exception as exc:  # a Pillow plugin bug must not abort the whole scan
            return len(data), "", f"The image could not be read: {exc}"
    return len(data), hashlib.sha256(data).hexdigest(), None


def _fingerprint(files: dict[str, tuple[int, str]]) -> str:
    digest = hashlib.sha256()
    for relpath in sorted(files):
        size, content_hash = files[relpath]
        digest.update(f"{relpath}\0{size}\0{content_hash}\n".encode())
    return digest.hexdigest()


def _check_counts(scan: DatasetScan, min_images_per_class: int) -> None:
    short = {name: n for name, n in scan.counts().items() if n < min_images_per_class}
    if short:
        listed = ", ".join(f"{name} ({n})" for name, n in sorted(short.items()))
        raise DatasetError(
            f"Every class needs at least {min_images_per_class} readable images; too few in: "
            f"{listed}."
            + (f" {len(scan.rejected)} file(s) could not be read." if scan.rejected else "")
            + (
                f" Photos are files ending in {', '.join(sorted(SUPPORTED_SUFFIXES))}."
                if 0 in short.values()
                else ""
            )
        )
