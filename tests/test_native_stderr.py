from __future__ import annotations

import os
import sys

import pytest

from infer.native_stderr import drop_tvm_log_noise


def test_scope_warnings_are_dropped_and_other_lines_kept(capfd: pytest.CaptureFixture[str]) -> None:
    with drop_tvm_log_noise():
        fd = sys.stderr.fileno()
        os.write(
            fd, b"[16:44:41] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving:\n"
        )
        os.write(fd, b"a real problem\n")
        os.write(
            fd, b"[16:44:44] /project/src/runtime/vm/executable.cc:340: Warning: Scope Loaded:\n"
        )
    assert capfd.readouterr().err == "a real problem\n"
