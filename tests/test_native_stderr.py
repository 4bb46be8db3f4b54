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


def test_tuning_noise_is_dropped(capfd: pytest.CaptureFixture[str]) -> None:
    with drop_tvm_log_noise():
        fd = sys.stderr.fileno()
        os.write(
            fd,
            b"[21:16:11] /project/src/relax/transform/meta_schedule.cc:95: Warning: Creating "
            b"JSONDatabase. Workload at: /tmp/x/database_workload.json\n",
        )
        os.write(
            fd,
            b"[21:17:29] /project/src/s_tir/meta_schedule/schedule_rule/apply_custom_rule.cc:64: "
            b'Warning: Unknown schedule rule "meta_schedule.pool_max" for target keys\n',
        )
        os.write(fd, b"  s_tir.meta_schedule.cpu.meta_schedule.pool_max\n")
        os.write(fd, b"  a real problem, indented\n")
    assert capfd.readouterr().err == "  a real problem, indented\n"
