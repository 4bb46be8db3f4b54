"""Writing artifact directories atomically: build in a staging folder, then rename into place."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from infer.artifact.manifest import MANIFEST_FILE
from infer.errors import ArtifactError

__all__ = ["STAGING_MARK", "build_atomically", "publish", "staging_dir", "write_file_atomically"]

# Staging folders carry this in their name; they are never a complete artifact.
STAGING_MARK = ".staging-"


def staging_dir(final: Path) -> Path:
    """Return a new empty staging folder beside final (same filesystem, so rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.parent / f".{final.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def publish(staged: Path, final: Path) -> None:
    """Move a complete staged artifact to final, replacing an older artifact there."""
    if final.exists() or final.is_symlink():
        if final.is_symlink() or not final.is_dir():
            raise ArtifactError(
                f"{final}: exists and is not an artifact directory; not replacing it"
            )
        if any(final.iterdir()) and not (final / MANIFEST_FILE).is_file():
            raise ArtifactError(
                f"{final}: exists, is not empty and is not an artifact; not replacing it"
            )
        retired = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, retired)
        os.replace(staged, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staged, final)


def build_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Run build(staging folder), then publish it as final; on failure nothing is left behind."""
    staged = staging_dir(final)
    try:
        build(staged)
        publish(staged, final)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write data to path through a temporary file beside it: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
