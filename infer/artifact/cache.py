"""The compile cache: artifacts keyed by the sha256 of everything that shapes the compiled code."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from infer.artifact.manifest import MANIFEST_FILE, ArtifactManifest
from infer.artifact.store import STAGING_MARK, build_atomically
from infer.errors import ArtifactError, InferError

__all__ = ["CacheEntry", "CompileCache", "cache_key"]

ARTIFACTS_DIR = "artifacts"
LOCKS_DIR = "locks"
# Tuning databases (optimize/tuning.py), one per model and target; `prune` leaves them alone.
TUNING_DIR = "tuning"
LOCK_TIMEOUT_S = 3600.0


def cache_key(parts: dict[str, Any]) -> str:
    """Return the cache key: sha256 of the canonical JSON of parts (model hash, target, ...)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One folder under the cache's artifacts/."""

    key: str
    path: Path
    manifest: ArtifactManifest | None
    problem: str | None
    size_bytes: int
    last_used: float

    @property
    def ok(self) -> bool:
        """Return True for a complete, undamaged entry."""
        return self.problem is None


def _check_trusted(path: Path) -> None:
    info = path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ArtifactError(
            f"cache directory {path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}); "
            "not trusted, since it holds code that gets loaded"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ArtifactError(
            f"cache directory {path} is writable by group or others (mode {stat.filemode(info.st_mode)}); "
            "not trusted, since it holds code that gets loaded"
        )


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class CompileCache:
    """Artifacts under root/artifacts/<key>, built once per key under a file lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.artifacts = root / ARTIFACTS_DIR
        self.locks = root / LOCKS_DIR

    def _prepare(self) -> None:
        for path in (self.root, self.artifacts, self.locks):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            _check_trusted(path)

    def tuning_dir(self, model_sha256: str, target: dict[str, Any]) -> Path:
        """Return the folder of the tuning database of this model on this target (it may not
        exist yet); the folders above it are created and checked like the cache's own."""
        self._prepare()
        tuning = self.root / TUNING_DIR
        tuning.mkdir(mode=0o700, exist_ok=True)
        _check_trusted(tuning)
        key = cache_key({"model_sha256": model_sha256, "target": target})
        return tuning / key[:32]

    def tuning_dirs(self) -> list[Path]:
        """Return the folders of the tuning databases in the cache."""
        tuning = self.root / TUNING_DIR
        return sorted(p for p in tuning.iterdir() if p.is_dir()) if tuning.is_dir() else []

    def path_for(self, key: str) -> Path:
        """Return the folder an entry of this key lives in."""
        return self.artifacts / key

    def lookup(self, key: str) -> Path | None:
        """Return the entry's folder when it is complete, else None."""
        path = self.path_for(key)
        if (path / MANIFEST_FILE).is_file():
            self._prepare()
            os.utime(path)
            return path
        return None

    def get_or_build(self, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return (entry folder, hit); on a miss, build(staging) fills a folder published atomically.

        Concurrent callers of one key take a file lock: one builds, the others wait and hit.
        """
        found = self.lookup(key)
        if found is not None:
            return found, True
        self._prepare()
        final = self.path_for(key)
        with FileLock(str(self.locks / f"{key}.lock"), timeout=LOCK_TIMEOUT_S):
            found = self.lookup(key)
            if found is not None:
                return found, True
            if final.exists():  # damaged (no manifest): rebuild it
                shutil.rmtree(final, ignore_errors=True)
            build_atomically(final, build)
        return final, False

    def entries(self) -> Iterator[CacheEntry]:
        """Yield every entry, complete or not, with what is wrong with it if anything."""
        if not self.artifacts.is_dir():
            return
        for path in sorted(self.artifacts.iterdir()):
            if not path.is_dir():
                continue
            manifest: ArtifactManifest | None = None
            problem: str | None = None
            if STAGING_MARK in path.name or ".old-" in path.name:
                problem = "incomplete (an interrupted compile)"
            else:
                try:
                    manifest = ArtifactManifest.read(path)
                except InferError as exc:
                    problem = str(exc)
            yield CacheEntry(
                key=path.name,
                path=path,
                manifest=manifest,
                problem=problem,
                size_bytes=_dir_size(path),
                last_used=path.stat().st_mtime,
            )

    def verify(self) -> list[CacheEntry]:
        """Return every entry with problem set for those whose files fail their sha256."""
        checked: list[CacheEntry] = []
        for entry in self.entries():
            if entry.ok and entry.manifest is not None:
                try:
                    entry.manifest.verify_files(entry.path)
                except InferError as exc:
                    entry = CacheEntry(
                        entry.key,
                        entry.path,
                        entry.manifest,
                        str(exc),
                        entry.size_bytes,
                        entry.last_used,
                    )
            checked.append(entry)
        return checked

    def prune(
        self, *, everything: bool = False, older_than_s: float | None = None
    ) -> list[CacheEntry]:
        """Remove damaged and incomplete entries (and all, or those unused for older_than_s); return them."""
        removed: list[CacheEntry] = []
        now = time.time()
        for entry in self.verify():
            stale = older_than_s is not None and now - entry.last_used > older_than_s
            if entry.ok and not everything and not stale:
                continue
            if not entry.ok and STAGING_MARK in entry.key:
                lock = FileLock(
                    str(self.locks / f"{entry.key.split(STAGING_MARK)[0].lstrip('.')}.lock")
                )
                try:
                    lock.acquire(timeout=0)
                except TimeoutError:
                    continue  # a compile is writing it now
                try:
                    shutil.rmtree(entry.path, ignore_errors=True)
                finally:
                    lock.release()
            else:
                shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry)
        return removed
