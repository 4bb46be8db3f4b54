"""`infer bench`: each runtime measured in a worker process of its own, on a small compiled model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import infer
from infer.bench import (
    BenchCell,
    BenchRow,
    RuntimeResult,
    bench_cell,
    bench_row,
    cell_dims,
    markdown_table,
    plot_rows,
)
from infer.cli import cli
from infer.errors import InferError, InputError
from infer.progress import Progress
from infer.timing import LatencyStats
from tests import onnx_models
from tests.conftest import save


@pytest.fixture
def mlp_artifact(mlp_path: Path, tmp_path: Path) -> Path:
    return infer.compile(mlp_path, output=tmp_path / "mlp.infer", check_dims={"batch": 2}).path


def test_each_runtime_reports_latency_memory_and_version(
    mlp_artifact: Path, tmp_path: Path
) -> None:
    cell = BenchCell("mlp", mlp_artifact, threads=1, batch=4, repeat=5, warmup=1, min_seconds=0)
    ours = bench_cell(cell, "infer")
    ort = bench_cell(cell, "onnxruntime")
    assert ours.version.startswith("infer (tvm ") and ort.version.startswith("onnxruntime 1.")
    for result in (ours, ort):
        assert result.latency.runs == 5
        assert 0 < result.latency.min_ms <= result.latency.median_ms <= result.latency.p90_ms
        # The worker's own peak (VmHWM), not its big parent's: a fresh process stays far below.
        assert 0 < result.base_rss_mb <= result.peak_rss_mb < 2048
    # ONNX Runtime's worker never imports TVM, so its baseline is well below infer's.
    assert ort.base_rss_mb < ours.base_rss_mb
    row = BenchRow(cell, {"infer": ours, "onnxruntime": ort})
    assert row.ratio == pytest.approx(ours.latency.median_ms / ort.latency.median_ms)
    table = markdown_table([row])
    assert table.splitlines()[2].startswith("| mlp | 1 | 4 | ")
    assert f"{row.ratio:.2f}x" in table
    plot_rows([row], tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_rounds_alternate_the_runtimes_and_the_ratio_is_their_median(
    mlp_artifact: Path, tmp_path: Path
) -> None:
    cell = BenchCell("mlp", mlp_artifact, threads=1, batch=2, repeat=4, warmup=1, min_seconds=0)
    log = tmp_path / "progress.txt"
    with log.open("w") as stream:
        row = bench_row(cell, rounds=3, progress=Progress("plain", stream))
    started = [line for line in log.read_text().splitlines() if line.endswith(" ...")]
    # Each round is a fresh process per runtime, the first runtime alternating.
    assert [line.split(": ")[-1] for line in started] == [
        "infer, round 1/3 ...", "onnxruntime, round 1/3 ...",
        "onnxruntime, round 2/3 ...", "infer, round 2/3 ...",
        "infer, round 3/3 ...", "onnxruntime, round 3/3 ...",
    ]  # fmt: skip
    assert len(row.round_ratios) == 3
    assert row.ratio == sorted(row.round_ratios)[1]
    assert row.results["infer"].latency.runs == 12
    lo, hi = min(row.round_ratios), max(row.round_ratios)
    assert row.cells()[5] == f"{row.ratio:.2f}x ({lo:.2f}-{hi:.2f})"
    assert json.loads(json.dumps(row.to_json()))["round_ratios"] == list(row.round_ratios)
    with pytest.raises(InputError, match="rounds: expected >= 1, got 0"):
        bench_row(cell, rounds=0)


def test_combined_rounds_take_the_median_of_medians_and_the_highest_peak() -> None:
    def result(median: float, runs: int, peak: float) -> RuntimeResult:
        latency = LatencyStats(runs, median, median * 2, median / 2, median + 1)
        return RuntimeResult("infer", "v", latency, median, 100.0, peak)

    combined = RuntimeResult.combine(
        [result(1.0, 10, 300), result(9.0, 30, 200), result(2.0, 10, 250)]
    )
    assert combined.latency.median_ms == 2.0 and combined.latency.p90_ms == 4.0
    assert combined.latency.min_ms == 0.5 and combined.latency.runs == 50
    assert combined.latency.mean_ms == pytest.approx((2 * 10 + 10 * 30 + 3 * 10) / 50)
    assert combined.peak_rss_mb == 300 and combined.load_s == 2.0


def test_a_batch_needs_a_symbolic_leading_dim(tmp_path: Path) -> None:
    fixed = infer.compile(
        save(onnx_models.conv_net(batch=1), tmp_path), output=tmp_path / "c.infer"
    )
    specs = fixed.manifest.inputs
    assert cell_dims(specs, 1, {}) == {}
    with pytest.raises(InputError, match=r"batch 8: the model has a fixed batch size \(x \[1, 3"):
        cell_dims(specs, 8, {})


def test_a_failing_worker_names_the_cell(mlp_artifact: Path) -> None:
    cell = BenchCell(
        "mlp", mlp_artifact, threads=1, batch=1, dims={}, repeat=1, warmup=0, min_seconds=0
    )
    with pytest.raises(
        InferError, match=r"bench mlp \(tensorflow, threads 1, batch 1\): error: runtime"
    ):
        bench_cell(cell, "tensorflow")


def test_cli_bench_prints_rows_and_writes_markdown(mlp_artifact: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["--quiet", "bench", str(mlp_artifact), "--threads", "1,2", "--batch", "1,3",
         "--repeat", "3", "--warmup", "1", "--rounds", "1", "--json",
         "--markdown", str(tmp_path / "t.md")],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (2, 1), (1, 3), (2, 3)]
    for r in rows:
        assert r["ratio_vs_onnxruntime"] == pytest.approx(
            r["infer"]["latency"]["median_ms"] / r["onnxruntime"]["latency"]["median_ms"]
        )
        assert r["round_ratios"] == [r["ratio_vs_onnxruntime"]]
    assert len((tmp_path / "t.md").read_text().splitlines()) == 2 + 4


def test_cli_bench_rejects_bad_lists(mlp_artifact: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", str(mlp_artifact), "--threads", "1,x"])
    assert result.exit_code == 2
    assert "--threads '1,x': expected a comma-separated list of integers >= 1" in result.output
    result = CliRunner().invoke(cli, ["bench", str(mlp_artifact), "--markdown", "/no/such/t.md"])
    assert result.exit_code == 2
    assert "--markdown /no/such/t.md: the directory /no/such does not exist" in result.output


def test_cli_bench_task_checks_its_inputs_before_timing(tmp_path: Path) -> None:
    for args, message in (
        (
            ["--task", "no-such"],
            "tasks with a reference: ['automatic-speech-recognition', 'feature-extraction', 'ocr', 'voice-activity-detection']",
        ),
        (["--task", "ocr"], "bench --task ocr: give input files"),
        (["--task", "voice-activity-detection"], "give input files"),
        (["--task", "ocr", str(tmp_path / "none.png")], "none.png"),
        (["--task", "feature-extraction", "x.txt"], "takes no files"),
        ([], "give MODELS to time"),
    ):
        result = CliRunner().invoke(cli, ["bench", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
