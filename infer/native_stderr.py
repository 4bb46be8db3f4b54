"""Filtering what native code (TVM's C++ logging) writes to the process's stderr.

TVM 0.27 logs one warning line per constant each time a VM executable is saved or loaded
("Scope Saving:" / "Scope Loaded:"), one when a compile opens a tuning database ("Creating
JSONDatabase"), and one per tuning round of a pooling kernel ("Unknown schedule rule"), with no
switch to turn them off. These lines say nothing to a user, so around
those calls fd 2 goes to a temporary file and every other line is passed on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

__all__ = ["drop_tvm_log_noise"]

_NOISE = re.compile(
    r"executable\.cc:\d+: Warning: Scope (Saving|Loaded):"
    r"|meta_schedule\.cc:\d+: Warning: Creating JSONDatabase"
    # MetaSchedule looks for a custom rule named by the pooling kernels, and lists what it found.
    r"|apply_custom_rule\.cc:\d+: Warning: Unknown schedule rule"
    r"|^\s+s_tir\.meta_schedule\.\S+$"
)
_LOCK = threading.Lock()


@contextlib.contextmanager
def drop_tvm_log_noise() -> Iterator[None]:
    """Run the body with TVM's uninformative warnings (above) removed from stderr."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (embedded, captured)
        yield
        return
    with _LOCK, tempfile.TemporaryFile(mode="w+b") as capture:
        sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                if not _NOISE.search(line)
            ]
            if kept:
                os.write(fd, "".join(kept).encode())
