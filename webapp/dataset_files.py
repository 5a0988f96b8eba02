"""Putting images on disk safely: zip and tar extraction, folder copies, per-class uploads.

The services in ``webapp/services.py`` decide *what* happens to a dataset row; this module
does the file work. Everything lands in a staging folder first and is moved into place in
one rename, so a failed import leaves nothing half-written behind. Defences: zip-slip
(absolute paths, ``..``, links), zip bombs (entry count, total unpacked size, per-entry
ratio), oversized files, non-image files, and class folder names users could not type.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import tarfile
import unicodedata
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from classifier.images import SUPPORTED_SUFFIXES

CLASS_NAME = re.compile(r"^[\w][\w .,+()&'-]{0,99}$")
IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
MAX_RATIO = 200  # an entry that unpacks to 200x its compressed size is a bomb, not a photo
FLOWERS_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
)


class ImportRefused(Exception):
    """The upload cannot become a dataset; the message says why, in words."""


@dataclass
class ImportReport:
    """What an import wrote and what it refused (relative path, reason)."""

    written: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # casefolded class name -> the spelling met first: "Roses/" and "roses/" are one class
    class_spellings: dict[str, str] = field(default_factory=dict)
    # the files write_uploads wrote, so a caller can take them back
    paths: list[Path] = field(default_factory=list)

    def reject(self, name: str, reason: str) -> None:
        self.rejected.append((name, reason))


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    max_total_bytes: int
    max_files: int


def validate_class_name(name: str) -> str:
    """The class name as stored: stripped and NFC-normalised (macOS writes "é" as "e" plus
    a combining accent, browsers send one character; both must be the same class)."""
    name = unicodedata.normalize("NFC", name.strip())
    if not CLASS_NAME.match(name) or name in (".", ".."):
        raise ImportRefused(
            f"“{name}” cannot be a class name: use letters, digits, spaces, dots, dashes or "
            "underscores (at most 100 characters, not starting with a dot)."
        )
    return name


def staging_dir(final: Path) -> Path:
    path = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def move_into_place(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final`` (same filesystem: atomic)."""
    if final.exists():
        raise ImportRefused(f"{final} already exists.")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)


def _class_and_rest(parts: tuple[str, ...]) -> tuple[str, PurePosixPath] | None:
    if len(parts) < 2:
        return None
    return parts[0], PurePosixPath(*parts[1:])


def _strip_common_root(names: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """``flowers/daisy/1.jpg`` and ``flowers/roses/2.jpg`` -> ``daisy/1.jpg``, ``roses/2.jpg``.

    People zip the dataset folder itself as often as its contents; both layouts work. Only
    the photos decide: a ``flowers/LICENSE.txt`` beside the class folders (as in
    ``flower_photos.tgz``) is stripped with them and then refused as outside any class.
    """
    while True:
        photos = [p for p in names if PurePosixPath(p[-1]).suffix.lower() in SUPPORTED_SUFFIXES]
        if not photos or any(len(p) <= 2 for p in photos) or len({p[0] for p in photos}) > 1:
            return names
        root = photos[0][0]
        names = [p[1:] if p[0] == root and len(p) > 1 else p for p in names]


def _safe_parts(name: str) -> tuple[str, ...] | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or any(":" in part for part in path.parts):
        return None
    return tuple(part for part in path.parts if part not in ("", "."))


def _is_ignored(parts: tuple[str, ...]) -> bool:
    return any(part in IGNORED_PARTS or part.startswith(".") for part in parts)


def extract_zip(archive: Path, dest: Path, limits: Limits) -> ImportReport:
    """Extract the images of a zip of class folders into ``dest/<class>/...``.

    Raises ImportRefused for a broken zip, a zip bomb or a layout with no class folders.
    Individual bad entries (links, unsafe paths, non-images, oversized files) are skipped and
    listed in the report.
    """
    try:
        zf = _open_zip(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImportRefused(f"The upload is not a readable zip file ({exc}).") from None
    with zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
        if len(infos) > limits.max_files:
            raise ImportRefused(
                f"The zip holds {len(infos):,} files; the limit is {limits.max_files:,}."
            )
        declared = sum(info.file_size for info in infos)
        if declared > limits.max_total_bytes:
            raise ImportRefused(
                f"The zip unpacks to {declared / 2**20:,.0f} MB; the limit is "
                f"{limits.max_total_bytes / 2**20:,.0f} MB."
            )
        entries = []
        report = ImportReport()
        for info in infos:
            parts = _safe_parts(info.filename)
            if parts is None:
                report.reject(info.filename, "unsafe path (absolute or with ..); skipped")
                continue
            if not parts or _is_ignored(parts):
                continue
            if info.flag_bits & 0x1:
                raise ImportRefused(
                    "The zip is password-protected; zip the folder again without a password."
                )
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                report.reject(info.filename, "symbolic links are not allowed; skipped")
                continue
            if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
                raise ImportRefused(
                    f"{info.filename} unpacks to {info.file_size / info.compress_size:,.0f}x its "
                    "compressed size: this looks like a zip bomb, so nothing was imported."
                )
            entries.append((parts, info))
        stripped = _strip_common_root([parts for parts, _ in entries])
        written_total = 0
        for parts, (_, info) in zip(stripped, entries, strict=True):
            target = _target_for(parts, info.filename, info.file_size, dest, limits, report)
            if target is None:
                continue
            written_total += info.file_size
            if written_total > limits.max_total_bytes:
                raise ImportRefused("The zip unpacks to more than the allowed total size.")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            except NotImplementedError as exc:
                raise ImportRefused(
                    f"{info.filename} cannot be unpacked ({exc}); zip the folder again with "
                    "ordinary (deflate) compression."
                ) from None
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                target.unlink(missing_ok=True)
                report.reject(info.filename, f"damaged in the zip ({exc}); skipped")
                continue
            report.written += 1
    _require_classes(dest, report)
    return report


def _open_zip(archive: Path) -> zipfile.ZipFile:
    """Open ``archive``, reading names not flagged as UTF-8 as UTF-8 when they are valid
    UTF-8 (macOS's Archive Utility writes them so), else as the standard's cp437."""
    try:
        return zipfile.ZipFile(archive, metadata_encoding="utf-8")
    except UnicodeDecodeError:
        return zipfile.ZipFile(archive)


def extract_tar(archive: Path, dest: Path, limits: Limits) -> ImportReport:
    """Extract a .tar/.tgz of class folders (as ``flower_photos.tgz``); same rules as zips."""
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 - closed by the with block below
    except (tarfile.TarError, OSError) as exc:
        raise ImportRefused(f"The download is not a readable tar archive ({exc}).") from None
    report = ImportReport()
    try:
        with tf:
            members = [m for m in tf.getmembers() if not m.isdir()]
            if len(members) > limits.max_files:
                raise ImportRefused(
                    f"The archive holds {len(members):,} files; the limit is {limits.max_files:,}."
                )
            if sum(m.size for m in members) > limits.max_total_bytes:
                raise ImportRefused("The archive unpacks to more than the allowed total size.")
            entries = []
            for member in members:
                parts = _safe_parts(member.name)
                if parts is None or not member.isfile():
                    report.reject(member.name, "not a plain file with a safe path; skipped")
                    continue
                if parts and not _is_ignored(parts):
                    entries.append((parts, member))
            stripped = _strip_common_root([parts for parts, _ in entries])
            for parts, (_, member) in zip(stripped, entries, strict=True):
                target = _target_for(parts, member.name, member.size, dest, limits, report)
                if target is None:
                    continue
                source = tf.extractfile(member)
                if source is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                report.written += 1
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        # One damaged spot ends a compressed tar stream: nothing after it can be read, so
        # the archive is refused (a zip's entries are compressed one by one and skipped).
        raise ImportRefused(
            f"The download is damaged or cut short ({exc}), so nothing was imported. Import "
            "it again; if that keeps failing, download the file elsewhere and upload it as a zip."
        ) from None
    _require_classes(dest, report)
    return report


def copy_directory(source: Path, dest: Path, limits: Limits) -> ImportReport:
    """Copy the images of a server folder of class folders into ``dest``."""
    if not source.is_dir():
        raise ImportRefused(f"{source} is not a folder on the server.")
    report = ImportReport()
    for path in sorted(source.rglob("*")):
        if path.is_dir():
            continue
        parts = path.relative_to(source).parts
        if _is_ignored(parts):
            continue
        if path.is_symlink():
            report.reject("/".join(parts), "symbolic links are not followed; skipped")
            continue
        target = _target_for(parts, "/".join(parts), path.stat().st_size, dest, limits, report)
        if target is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        report.written += 1
    _require_classes(dest, report)
    return report


def download(url: str, dest: Path, *, max_bytes: int, timeout: float = 30) -> Path:
    """Download ``url`` to ``dest`` with a size limit; ImportRefused with the reason on failure."""
    if not url.startswith(("https://", "http://")):
        raise ImportRefused("Only http:// and https:// addresses can be imported.")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise ImportRefused(
                        f"The download is larger than the limit of {max_bytes / 2**20:,.0f} MB."
                    )
                out.write(chunk)
    except ImportRefused:
        raise
    except urllib.error.HTTPError as exc:
        raise ImportRefused(
            f"Could not download {url}: the server answered {exc.code} {exc.reason}. Check "
            "the address, or download the file elsewhere and upload it as a zip instead."
        ) from None
    except Exception as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise ImportRefused(
            f"Could not download {url} ({reason}). Is this server connected to the internet? "
            "You can download the file elsewhere and upload it as a zip instead."
        ) from None
    return dest


def write_uploads(
    files: Iterable[tuple[str, bytes]], class_dir: Path, limits: Limits, report: ImportReport
) -> None:
    """Write per-class uploads (name, content) into ``class_dir``, never overwriting a file.

    ``class_dir`` is created with its first photo: refused uploads leave no empty class.
    """
    from classifier.errors import InvalidImageError
    from classifier.images import open_image

    for name, content in files:
        base = Path(name.replace("\\", "/")).name
        if Path(base).suffix.lower() not in SUPPORTED_SUFFIXES:
            report.reject(base, "not a JPEG, PNG, BMP, WebP or GIF file")
            continue
        if len(content) > limits.max_file_bytes:
            report.reject(base, f"larger than {limits.max_file_bytes // 2**20} MB")
            continue
        try:
            open_image(content)
        except InvalidImageError as exc:
            report.reject(base, str(exc))
            continue
        class_dir.mkdir(parents=True, exist_ok=True)
        target = _unique(class_dir / _clean_filename(base))
        target.write_bytes(content)
        report.written += 1
        report.paths.append(target)


def remove_files(root: Path, relpaths: Iterable[str]) -> None:
    for relpath in relpaths:
        (root / relpath).unlink(missing_ok=True)


def _target_for(
    parts: tuple[str, ...],
    shown: str,
    size: int,
    dest: Path,
    limits: Limits,
    report: ImportReport,
) -> Path | None:
    split = _class_and_rest(parts)
    if split is None:
        report.reject(shown, "not inside a class folder; skipped")
        return None
    class_name, rest = split
    try:
        class_name = validate_class_name(class_name)
    except ImportRefused as exc:
        report.reject(shown, str(exc))
        return None
    class_name = report.class_spellings.setdefault(class_name.casefold(), class_name)
    if rest.suffix.lower() not in SUPPORTED_SUFFIXES:
        report.reject(shown, "not a JPEG, PNG, BMP, WebP or GIF file; skipped")
        return None
    if size > limits.max_file_bytes:
        report.reject(shown, f"larger than {limits.max_file_bytes // 2**20} MB; skipped")
        return None
    flat = "__".join(_clean_filename(p) for p in rest.parts)
    return _unique(dest / class_name / flat)


def _clean_filename(name: str) -> str:
    cleaned = re.sub(r"[^\w.+-]+", "_", name).strip("._") or "image"
    return cleaned[-150:]


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    for n in range(2, 100_000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise ImportRefused(f"Too many files named {path.name}.")


def _require_classes(dest: Path, report: ImportReport) -> None:
    classes = sorted(p.name for p in dest.iterdir() if p.is_dir()) if dest.exists() else []
    if len(classes) < 2:
        found = f" (found: {', '.join(classes)})" if classes else ""
        raise ImportRefused(
            "Expected one folder per class (at least two), each holding that class's photos, "
            f"e.g. daisy/001.jpg and roses/002.jpg{found}. "
            f"{report.written} image(s) were found in the right place."
        )
