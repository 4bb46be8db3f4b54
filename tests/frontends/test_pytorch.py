"""The PyTorch frontend against PyTorch itself: small real models built here, compiled, compared.

The BERT-like encoder is exported raw (transformers, small random config, dynamic batch and
sequence axes): it is also the coverage issue's check that such an export runs wholly on TVM.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import infer
from infer.cli import cli
from infer.errors import InputError, ModelError

torch = pytest.importorskip("torch")

MIN_TVM_SHARE = 0.95


class SmallCNN(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(image)))
        y = torch.nn.functional.max_pool2d(y, 2)
        y = torch.relu(self.conv2(y))
        return torch.softmax(self.fc(y.mean((2, 3))), dim=-1)


class Recurrent(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(8, 16, batch_first=True)
        self.lstm = torch.nn.LSTM(16, 12, batch_first=True, bidirectional=True)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(frames)
        z, _ = self.lstm(y)
        return z


def _trained_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give batch norm real statistics (a few training-mode passes), then eval mode."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    return model.eval()


def test_cnn_with_dynamic_batch_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _trained_bn(SmallCNN())
    art = infer.compile(
        model,
        example_inputs=(torch.randn(2, 3, 32, 32),),
        dynamic_axes={"image": {0: "batch"}},
        output=tmp_path / "cnn.infer",
        threads=2,
    )
    assert art.manifest.frontend is not None
    assert art.manifest.frontend["framework"] == "pytorch"
    assert art.manifest.frontend["exporter"] == "torch.onnx.export(dynamo=True)"
    assert art.manifest.parity is not None
    assert art.manifest.parity["framework"]["status"] == "passed"
    assert art.manifest.inputs[0].shape == ("batch", 3, 32, 32)
    session = art.load(threads=2)
    assert session.placement()["tvm_node_share"] == 1.0
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        (got,) = session.run(None, {"image": x})
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_gru_and_lstm_run_on_tvm_and_match_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Recurrent().eval()
    art = infer.compile(
        model,
        example_inputs=(torch.randn(2, 20, 8),),
        dynamic_axes={"frames": {0: "batch"}},
        output=tmp_path / "rnn.infer",
        threads=2,
    )
    session = art.load(threads=2)
    placement = session.placement()
    print(f"GRU + LSTM: {placement['tvm_node_share']:.1%} of nodes on TVM")
    assert placement["tvm_node_share"] == 1.0
    x = np.random.default_rng(0).standard_normal((3, 20, 8)).astype(np.float32)
    (got,) = session.run(None, {"frames": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bert_encoder_exported_raw_runs_on_tvm_with_dynamic_batch_and_sequence(
    tmp_path: Path,
) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=500,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    torch.manual_seed(2)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 500, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    art = infer.compile(
        model,
        example_inputs=(ids, mask),
        dynamic_axes={"input_ids": axes, "attention_mask": axes},
        output=tmp_path / "bert.infer",
        save_onnx=tmp_path / "bert.onnx",
        threads=2,
    )
    assert [o.name for o in art.manifest.outputs] == ["last_hidden_state", "pooler_output"]
    exported = onnx.load(tmp_path / "bert.onnx")
    assert {n.op_type for n in exported.graph.node} >= {"Shape", "Reshape"}  # raw, not frozen
    session = art.load(threads=2)
    placement = session.placement()
    print(f"BERT-like encoder: {placement['tvm_node_share']:.1%} of nodes on TVM, {placement}")
    assert placement["tvm_node_share"] >= MIN_TVM_SHARE
    rng = np.random.default_rng(3)
    for batch, length in ((1, 5), (3, 17), (2, 64)):
        feeds = {
            "input_ids": rng.integers(0, 500, (batch, length)),
            "attention_mask": np.ones((batch, length), dtype=np.int64),
        }
        feeds["attention_mask"][0, length // 2 :] = 0  # padding in the first row
        got = session.run(None, feeds)
        with torch.no_grad():
            want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        np.testing.assert_allclose(got[0], want.last_hidden_state.numpy(), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got[1], want.pooler_output.numpy(), rtol=1e-3, atol=1e-4)
    # A token id past the vocabulary: refused as transformers refuses it, not a clipped lookup.
    past = {"input_ids": np.full((1, 4), 500), "attention_mask": np.ones((1, 4), np.int64)}
    with pytest.raises(
        InputError,
        match=r"input 'input_ids': index 500 is out of range for Gather node .* size 500",
    ):
        session.run(None, past)


def test_pt2_file_compiles_from_the_cli_and_saves_its_onnx(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = _trained_bn(SmallCNN())
    program = torch.export.export(
        model,
        (torch.randn(2, 3, 32, 32),),
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
    )
    pt2 = tmp_path / "cnn.pt2"
    torch.export.save(program, str(pt2))
    out = tmp_path / "cnn.infer"
    args = ["-q", "compile", str(pt2), "-o", str(out), "--save-onnx", str(tmp_path / "cnn.onnx")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert onnx.load(tmp_path / "cnn.onnx").graph.node
    session = infer.load(out, threads=1)
    assert session.manifest.frontend is not None
    assert session.manifest.frontend["framework"] == "pytorch"
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    (got,) = session.run(None, {"image": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


class Unexportable(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x).real


def test_export_failure_names_the_framework_and_the_op() -> None:
    with pytest.raises(
        ModelError, match=r"PyTorch Unexportable: torch\.onnx cannot export it at op aten::\w*eig"
    ):
        infer.compile(Unexportable(), example_inputs=(torch.randn(3, 3),))


def test_module_without_example_inputs_or_with_unknown_dynamic_axes_is_refused() -> None:
    with pytest.raises(ModelError, match="give example_inputs"):
        infer.compile(SmallCNN())
    with pytest.raises(
        ModelError, match=r"dynamic_axes names input\(s\) \['x'\]; the inputs are \['image'\]"
    ):
        infer.compile(
            SmallCNN(), example_inputs=(torch.randn(1, 3, 8, 8),), dynamic_axes={"x": [0]}
        )


def test_example_inputs_on_an_onnx_model_is_refused(mlp_path: Path) -> None:
    with pytest.raises(ModelError, match="apply to framework models"):
        infer.compile(mlp_path, example_inputs=(np.zeros((1, 4), np.float32),))


def test_missing_framework_names_the_extra_to_install(tmp_path: Path) -> None:
    pt2 = tmp_path / "model.pt2"
    pt2.write_bytes(b"PK")
    code = f"import sys; sys.modules['torch'] = None\nimport infer\ninfer.compile({str(pt2)!r})\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "pip install 'infer[torch]'" in result.stderr


class Branchy(torch.nn.Module):  # type: ignore[misc]
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: torch.export refuses it
            return x * 2
        return x - 1


@pytest.mark.filterwarnings("default::infer.errors.FallbackWarning")
def test_torchscript_exporter_is_the_stated_fallback(tmp_path: Path) -> None:
    with pytest.warns(infer.FallbackWarning, match="dynamo exporter failed .*GuardOnDataDependent"):
        art = infer.compile(Branchy(), example_inputs=(torch.ones(2, 3),), output=tmp_path / "b")
    assert art.manifest.frontend is not None
    assert art.manifest.frontend["exporter"] == "torch.onnx.export(dynamo=False)"
    assert "GuardOnDataDependent" in art.manifest.frontend["dynamo_error"]
    (got,) = art.load().run(None, {"x": np.full((2, 3), 0.5, np.float32)})
    np.testing.assert_array_equal(got, np.full((2, 3), 1.0, np.float32))


class TwoInputs(torch.nn.Module):  # type: ignore[misc]
    def forward(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return keys * 2 - values


def test_one_tensor_given_for_two_inputs_still_makes_two_inputs(tmp_path: Path) -> None:
    # The tracer merged them into one graph input, and the second name went to nothing.
    same = torch.randn(2, 3)
    art = infer.compile(TwoInputs(), example_inputs=(same, same), output=tmp_path / "two")
    session = art.load()
    assert [i.name for i in session.get_inputs()] == ["keys", "values"]
    keys, values = np.ones((2, 3), np.float32), np.full((2, 3), 5, np.float32)
    (got,) = session.run(None, {"keys": keys, "values": values})
    np.testing.assert_array_equal(got, keys * 2 - values)
