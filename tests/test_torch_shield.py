"""TVM's modules do not pull PyTorch into a process that loads an artifact; torch still imports."""

from __future__ import annotations

from pathlib import Path

import pytest

import infer
from tests import onnx_models
from tests.conftest import run_python, save

_LOAD_AND_RUN = """
import sys
import infer
from infer.parity import random_feeds

session = infer.load(sys.argv[1], threads=1)
session.run(None, random_feeds(session.get_inputs()))
import tvm.relax  # the other module that imports torch
print("torch" in sys.modules)
import torch  # the user's own import is untouched
print(torch.ones(3).sum().item())
"""


def test_loading_an_artifact_does_not_import_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    artifact = infer.compile(save(onnx_models.mlp(), tmp_path), output=tmp_path / "m.infer").path
    assert run_python(_LOAD_AND_RUN, str(artifact)).split() == ["False", "3.0"]
