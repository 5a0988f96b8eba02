"""The web process's serving cache: each project's active version, loaded once per process.

Every classification asks the database one small indexed question, "which version of this
project is active now?" (the partial unique index behind ``one_active_version_per_project``
answers it), and compares the answer with the version this process has loaded. When an
admin activates another version, the next request in every process sees the new id, loads
that version once and swaps it in; no restart, no signal between processes.

With ``GRAFT_INT8`` on, a version whose int8 copy was accepted is served by that copy. The
same question fetches the version's int8 record too: when a quantization finishes after
the version was activated (the record changes), the next request loads the version again,
now in int8, the same way.

A request takes one immutable :class:`ServedVersion` (version id, number, int8 stamp,
predictor) and uses it throughout, so an answer never mixes two versions or two models.
Loading happens under a per-project lock only: requests for other projects, and requests
that already hold a version, never wait for a load. Only ``classifier.serving`` is
imported (LiteRT, no TensorFlow), which keeps the web process small.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings

from classifier.serving import Predictor
from webapp.models import ModelVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedVersion:
    """One loaded version: what a request classifies with, from start to finish."""

    version_id: int
    number: int
    activated_at: datetime | None
    predictor: Predictor
    # The int8 record it was loaded with ("" when int8 is off or there is none): when the
    # row's differs, the version is loaded again.
    int8_stamp: str = ""


class PredictorCache:
    """Per-process map ``project id -> ServedVersion``, refreshed on activation.

    Thread-safe: lookups read a dict entry (atomic in CPython); a load takes the
    project's own lock, so two threads never load the same version twice and a slow load
    stalls only requests of that project that need the new version.
    """

    def __init__(self, *, num_threads: int | None = None) -> None:
        self._num_threads = num_threads
        self._served: dict[int, ServedVersion] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def get(self, project_id: int) -> ServedVersion | None:
        """The project's active version, loaded; ``None`` when no version is active.

        Raises:
            classifier.errors.ArtifactError: the active version's files are missing or
                damaged; every request says so until it is fixed or another is activated.
        """
        row = (
            ModelVersion.objects.filter(project_id=project_id, is_active=True)
            .values_list("pk", "number", "activated_at", "directory", "int8")
            .first()
        )
        if row is None:
            return None
        version_id, number, activated_at, directory, int8 = row
        prefer_int8 = settings.GRAFT_INT8
        stamp = _int8_stamp(int8) if prefer_int8 else ""
        served = self._served.get(project_id)
        if _is_current(served, version_id, stamp):
            return served
        with self._lock_for(project_id):
            served = self._served.get(project_id)
            if _is_current(served, version_id, stamp):
                return served
            loaded = ServedVersion(
                version_id=version_id,
                number=number,
                activated_at=activated_at,
                predictor=self._load(Path(settings.GRAFT_DATA_DIR) / directory, prefer_int8),
                int8_stamp=stamp,
            )
            # A request that read the active row before a later activation (or a newer
            # int8 record) may arrive here after the newer one was stored: answer it, but
            # keep the newer one.
            if served is None or _is_newer(loaded, served):
                self._served[project_id] = loaded
            logger.info(
                "Serving version %s of project %s (%s)",
                number,
                project_id,
                loaded.predictor.precision,
            )
            return loaded

    def clear(self) -> None:
        """Forget every loaded version (tests; a settings change)."""
        with self._locks_guard:
            self._served.clear()

    def _load(self, path: Path, prefer_int8: bool) -> Predictor:
        return Predictor.load(path, num_threads=self._num_threads, prefer_int8=prefer_int8)

    def _lock_for(self, project_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(project_id, threading.Lock())


def _int8_stamp(record: dict | None) -> str:
    """What identifies an int8 record: when it was made (it sorts by that), whether it was
    accepted, and its file's checksum."""
    if not record:
        return ""
    return "/".join(
        str(part)
        for part in (
            record.get("created_at", ""),
            bool(record.get("accepted")),
            record.get("sha256"),
        )
    )


def _is_current(served: ServedVersion | None, version_id: int, stamp: str) -> bool:
    return served is not None and served.version_id == version_id and served.int8_stamp == stamp


def _is_newer(candidate: ServedVersion, current: ServedVersion) -> bool:
    if candidate.version_id == current.version_id and candidate.int8_stamp and current.int8_stamp:
        return candidate.int8_stamp >= current.int8_stamp
    if candidate.activated_at is None or current.activated_at is None:
        return True
    return candidate.activated_at >= current.activated_at


_cache: PredictorCache | None = None
_cache_guard = threading.Lock()


def cache() -> PredictorCache:
    """The process-wide cache, created on first use (after a fork, never before)."""
    global _cache
    if _cache is None:
        with _cache_guard:
            if _cache is None:
                _cache = PredictorCache(num_threads=settings.GRAFT_SERVING_THREADS)
    return _cache


def served_version(project_id: int) -> ServedVersion | None:
    """Shortcut for ``cache().get(project_id)``."""
    return cache().get(project_id)
