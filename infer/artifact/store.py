"""Writing artifact directories atomically: build in a staging folder, then rename into place."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from infer.artifact.manifest import MANIFEST_FILE
from infer.errors import ArtifactError

__all__ = [
    "MIN_FREE_BYTES",
    "STAGING_MARK",
    "WRITE_REFUSALS",
    "build_atomically",
    "check_free_space",
    "publish",
    "staging_dir",
    "write_file_atomically",
    "write_refusal",
]

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


# What the OS says when it refuses a write; a tool that wrote for us (the linker) passes it on.
WRITE_REFUSALS = tuple(
    os.strerror(code)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)
)


# A build writes its object code to the temporary folder, then lib.so and the weights beside
# the artifact. LLVM ends the process when one of its writes fails (a full disk, silently: our
# stderr filter's file is on that disk too), so a build is refused up front with less than this
# free in either folder. ResNet-50's lib.so is 0.8 MB; a later write that fails (its weights,
# 100 MB) is caught and named instead.
MIN_FREE_BYTES = 64_000_000


def write_refusal(message: str) -> str | None:
    """Return the OS's refusal of a write that message reports (a full disk ...), else None."""
    return next((r for r in WRITE_REFUSALS if r in message), None)


def _unwritable(path: Path, exc: OSError) -> ArtifactError:
    """Return the error for path that could not be written (a full disk, no permission)."""
    reason, where = exc.strerror or str(exc), exc.filename
    if isinstance(exc, FileExistsError) and where and not Path(where).is_dir():
        reason = f"{where} is a file, not a folder"  # what mkdir of a parent meets
    elif where and Path(where) != path:
        reason = f"{reason}: {where}"
    return ArtifactError(f"{path}: cannot write it: {reason}")


def check_free_space(final: Path) -> None:
    """ArtifactError when the folder of final or the temporary folder has under MIN_FREE_BYTES."""
    for folder in (final.parent, Path(tempfile.gettempdir())):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue  # no folder yet: mkdir will say what is wrong
        if free < MIN_FREE_BYTES:
            raise ArtifactError(
                f"{final}: only {free / 1e6:.1f} MB free in {folder}, a build needs "
                f"{MIN_FREE_BYTES / 1e6:.0f} MB there (LLVM ends the process on a full disk)"
            )


def build_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Run build(staging folder), then publish it as final; on failure nothing is left behind.

    ArtifactError when the filesystem refuses a write (a full disk, no permission), or would:
    check_free_space first."""
    check_free_space(final)
    try:
        staged = staging_dir(final)
    except OSError as exc:
        raise _unwritable(final, exc) from None
    try:
        build(staged)
        publish(staged, final)
    except OSError as exc:
        raise _unwritable(final, exc) from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write data to path through a temporary file beside it: never a half-written file.

    ArtifactError when the filesystem refuses the write."""
    tmp = path.parent / f".{path.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    finally:
        with contextlib.suppress(OSError):  # no folder, no temporary file
            tmp.unlink(missing_ok=True)
