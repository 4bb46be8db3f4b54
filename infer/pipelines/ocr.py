"""ocr: text lines of a picture, in reading order, with their boxes (PP-OCRv4 det + cls + rec).

Three compiled models, each checked against ONNX Runtime:
- the detector (DBNet) takes any height and width (multiples of 32). Measured here at 736x1472,
  1 thread: fixed-shape compile 329 ms, ONNX Runtime 377-434 ms, symbolic height and width
  633 ms (ppocr-det-any: TVM's code for the layout transposes between the oneDNN convolutions is
  slower with symbolic extents). Padding pictures onto a few fixed canvases was ruled out: the
  squeeze-excitation blocks average over the whole map, so the padding changed the probability
  map by up to 0.99 and lost lines. So the symbolic detector runs every size, and sizes listed in
  det.fixed_sizes get a fixed-shape detector of their own (compiled on first use in the cache,
  at build time in a bundle) for the pictures that come at one size (scans, screenshots);
- the direction classifier at rapidocr's 48x192, one line per run;
- the recogniser with a symbolic width (48 x width), as fast as a fixed one (97 ms both at
  width 960), one line per run at the width rapidocr gives it: lines sorted by aspect ratio in
  groups of rec.group (6), each padded to its group's widest, so the text is rapidocr's.

A bundle directory (`infer compile --task ocr -o DIR`) holds pipeline.json and one artifact per
model (det/, det-HxW/ per fixed size, cls/, rec/); pipeline.json records the sha256 of each
one's manifest, and each artifact verifies its own files when loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infer.errors import PipelineError
from infer.graph.spatial import to_blocks
from infer.pipelines.base import (
    BUNDLE_COMPONENT,
    PIPELINE_FILE,
    Pipeline,
    bundle_component,
    component_entry,
    read_pipeline_config,
    write_pipeline_json,
)
from infer.processors.image import is_single_image, open_image
from infer.processors.ocr import (
    DbConfig,
    TextBox,
    crop_line,
    ctc_decode,
    cv2_module,
    db_boxes,
    det_size,
    det_tensor,
    line_tensor,
    reading_order,
    scaled_to_32,
)
from infer.progress import Progress
from infer.runtime.session import Session

__all__ = ["OcrPipeline"]

DET, DET_ANY, CLS, REC = "ppocr-det", "ppocr-det-any", "ppocr-cls", "ppocr-rec"
# The parity check's size of the symbolic detector's input blocks (a 736x1472 picture).
DET_CHECK_DIMS = {"h": 23, "w": 46}
REC_SHAPES = {"x": (1, 3, 48, "width")}  # the recogniser's width stays symbolic
REC_CHECK_DIMS = {"width": 320}
CHARACTER_KEY = "character"  # the recogniser's ONNX metadata entry listing its characters
PER_MODEL_OPTIONS = ("shapes", "check_dims", "save_onnx", "dump_ir")


def default_config(characters: Sequence[str]) -> dict[str, Any]:
    """Return the pipeline config of rapidocr-onnxruntime 1.4.4's defaults."""
    return {
        "task": OcrPipeline.task,
        "image": {"max_side_len": 2000, "min_side_len": 30, "min_height": 30, "max_aspect": 8},
        "det": {
            "limit_side_len": 736,
            "limit_type": "min",
            "thresh": 0.3,
            "box_thresh": 0.5,
            "max_candidates": 1000,
            "unclip_ratio": 1.6,
            "use_dilation": True,
            "fixed_sizes": [],
        },
        "cls": {"height": 48, "width": 192, "thresh": 0.9, "labels": ["0", "180"]},
        "rec": {"height": 48, "min_width": 320, "group": 6, "text_score": 0.5},
        # CTC class i is characters[i]: 0 is the blank, then the model's list, then a space.
        "characters": ["", *characters, " "],
    }


def _default_config(progress: Progress | None) -> dict[str, Any]:
    from infer.registry import get_recipe, pull

    log = progress.log if progress is not None else (lambda _m: None)
    return default_config(recogniser_characters(pull(get_recipe(REC), log=log)))


def recogniser_characters(path: Path) -> list[str]:
    """Return the character list in a PP-OCR recogniser's ONNX metadata."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if CHARACTER_KEY not in meta:
        raise PipelineError(f"{path}: no {CHARACTER_KEY!r} metadata (the recogniser's characters)")
    return str(meta[CHARACTER_KEY]).splitlines()


def _fixed_key(size: Sequence[int]) -> str:
    return f"det-{size[0]}x{size[1]}"


class _Models:
    """The compiled models: the symbolic detector, fixed-size detectors, classifier, recogniser.

    A bundle's artifacts are given as paths and loaded on first use; in the compile cache,
    compile(name, shapes, dims) makes each one when first needed.
    """

    def __init__(
        self,
        found: dict[str, Session | Path],
        threads: int | None,
        compile_model: Callable[[str, Any, Any], Session] | None = None,
    ) -> None:
        self.found = found
        self.threads = threads
        self.compile_model = compile_model

    def get(self, key: str) -> Session:
        """Return the session of key: "det", "det-HxW", "cls" or "rec"."""
        found = self.found.get(key)
        if isinstance(found, Session):
            return found
        if found is not None:
            session = Session(found, threads=self.threads)
        elif self.compile_model is None:
            raise PipelineError(f"ocr: the bundle has no {key} model")
        elif key == "det":
            session = self.compile_model(DET_ANY, None, DET_CHECK_DIMS)
        elif key == "cls":
            session = self.compile_model(CLS, None, None)
        elif key == "rec":
            session = self.compile_model(REC, REC_SHAPES, REC_CHECK_DIMS)
        else:
            h, w = (int(v) for v in key.removeprefix("det-").split("x"))
            session = self.compile_model(DET, {"x": (1, 3, h, w)}, None)
        self.found[key] = session
        return session


def _model_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the compile options that apply to every model of the task."""
    given = [k for k in PER_MODEL_OPTIONS if options.get(k)]
    if given:
        raise PipelineError(
            f"ocr: {', '.join(given)} apply to one model; the task sets its models'"
        )
    return {k: v for k, v in options.items() if k not in PER_MODEL_OPTIONS}


def _compile_into_cache(
    threads: int | None, progress: Progress | None, options: Mapping[str, Any]
) -> _Models:
    import infer

    options = _model_options(options)

    def compiled(name: str, shapes: Any, dims: Any) -> Session:
        if progress is not None:
            progress.log(f"ocr: {name} {dict(shapes or {})}")
        artifact = infer.compile(
            name, shapes=shapes, check_dims=dims, threads=threads, progress=progress, **options
        )
        return artifact.load(threads=threads)

    return _Models({}, threads, compiled)


def _open_bundle(bundle: Path, stored: Mapping[str, Any], threads: int | None) -> _Models:
    components = stored.get("components")
    if not isinstance(components, dict) or not {"det", "cls", "rec"} <= set(components):
        raise PipelineError(f"{bundle / PIPELINE_FILE}: components det, cls and rec expected")
    return _Models(
        {key: bundle_component(bundle, entry, key) for key, entry in components.items()}, threads
    )


class OcrPipeline(Pipeline):
    """Text lines of pictures: [{"text", "score", "box": [[x, y] x 4]}, ...] in reading order.

    Config (pipeline.json): image (rapidocr's global resizing limits), det (input size rule and
    DB post-processing), cls (input size, threshold, labels), rec (input height, minimum width,
    the score under which a line is dropped), characters (CTC class -> text).
    """

    task = "ocr"
    default_model = DET
    component_models = (DET_ANY, CLS, REC)
    description = "text lines of a page or photo, with boxes, in reading order"

    def __init__(self, models: _Models, config: Mapping[str, Any]) -> None:
        self.models = models
        self.config = dict(config)
        try:
            image, det, cls, rec = (config[k] for k in ("image", "det", "cls", "rec"))
            self.characters = [str(c) for c in config["characters"]]
            self.max_side = int(image["max_side_len"])
            self.min_side = int(image["min_side_len"])
            self.min_height = int(image["min_height"])
            self.max_aspect = float(image["max_aspect"])
            self.limit = (int(det["limit_side_len"]), str(det["limit_type"]))
            self.db = DbConfig(
                thresh=float(det["thresh"]),
                box_thresh=float(det["box_thresh"]),
                max_candidates=int(det["max_candidates"]),
                unclip_ratio=float(det["unclip_ratio"]),
                use_dilation=bool(det["use_dilation"]),
            )
            self.cls_size = (int(cls["height"]), int(cls["width"]))
            self.cls_thresh = float(cls["thresh"])
            self.cls_labels = [str(v) for v in cls["labels"]]
            self.rec_height = int(rec["height"])
            self.rec_min_width = int(rec["min_width"])
            self.rec_group = max(1, int(rec["group"]))
            self.text_score = float(rec["text_score"])
            self.fixed_sizes = {(int(h), int(w)) for h, w in det["fixed_sizes"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{self.task}: config: missing or malformed {exc}") from None
        bad = [
            f"{h}x{w}" for h, w in sorted(self.fixed_sizes) if h % 32 or w % 32 or min(h, w) < 32
        ]
        if bad:
            raise PipelineError(
                f"{self.task}: det.fixed_sizes {bad}: sides must be multiples of 32"
            )
        classes = models.get("rec").get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.characters):
            raise PipelineError(
                f"{self.task}: {len(self.characters)} characters for a recogniser with {classes} classes"
            )
        self.timings: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, models={self.component_models})"

    # -- opening and building ------------------------------------------------------------
    @classmethod
    def open(
        cls,
        model: Any,
        *,
        config: dict[str, Any] | None,
        threads: int | None,
        progress: Progress | None,
        compile_options: Mapping[str, Any],
    ) -> OcrPipeline:
        if model is None:
            models = _compile_into_cache(threads, progress, compile_options)
            pipe = cls(models, cls.make_config(None, config or _default_config(progress)))
            models.get("det")
            models.get("cls")
            return pipe
        bundle = Path(model)
        stored = read_pipeline_config(bundle) if bundle.is_dir() else None
        if stored is None or "components" not in stored:
            raise PipelineError(
                f"{cls.task}: {model} is not an OCR bundle; make one with "
                "`infer compile --task ocr -o DIR` (or give no model for the default)"
            )
        if stored["task"] != cls.task:
            raise PipelineError(f"{bundle}: built for task {stored['task']!r}, not {cls.task!r}")
        return cls(_open_bundle(bundle, stored, threads), cls.make_config(None, config or stored))

    @classmethod
    def build(
        cls,
        output: Path,
        model: Any,
        *,
        config: dict[str, Any] | None,
        threads: int | None,
        progress: Progress | None,
        compile_options: Mapping[str, Any],
    ) -> Path:
        """Compile the models into a bundle directory at output (det/, det-HxW/ for each of
        det.fixed_sizes, cls/, rec/ and pipeline.json); return output."""
        import infer

        if model is not None:
            raise PipelineError(f"{cls.task}: a bundle is built from the default models only")
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise PipelineError(f"{output}: exists and is not an empty directory")
        options = _model_options(compile_options)
        task_config = cls.make_config(None, config or _default_config(progress))
        fixed = [list(s) for s in task_config.get("det", {}).get("fixed_sizes", [])]
        plan: list[tuple[str, str, Any, Any]] = [
            ("det", DET_ANY, None, DET_CHECK_DIMS),
            *((_fixed_key(s), DET, {"x": (1, 3, *s)}, None) for s in fixed),
            ("cls", CLS, None, None),
            ("rec", REC, REC_SHAPES, REC_CHECK_DIMS),
        ]
        components: dict[str, Any] = {}
        for key, name, shapes, dims in plan:
            if not BUNDLE_COMPONENT.fullmatch(key):
                raise PipelineError(f"{cls.task}: det.fixed_sizes: {key} is not HxW")
            infer.compile(
                name, shapes=shapes, check_dims=dims, output=output / key, threads=threads,
                progress=progress, **options,
            )  # fmt: skip
            components[key] = component_entry(output, key)
        # The config is checked against the models (the recogniser's classes) before it is written.
        cls(_Models({k: output / k for k in components}, threads), task_config)
        write_pipeline_json(output / PIPELINE_FILE, {**task_config, "components": components})
        return output

    # -- running -------------------------------------------------------------------------
    def __call__(self, images: Any) -> Any:  # type: ignore[override]  # each task its options
        """Return the lines of one picture, or a list of those for a list of pictures."""
        self.timings = dict.fromkeys(("pre", "det", "cls", "rec", "post"), 0.0)
        single = is_single_image(images)
        pictures: Sequence[Any] = [images] if single else list(images)
        results = [self._one(p) for p in pictures]
        return results[0] if single else results

    def _clock(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.timings[stage] += now - started
        return now

    def _one(self, picture: Any) -> list[dict[str, Any]]:
        cv2 = cv2_module()
        t = time.perf_counter()
        rgb = np.asarray(open_image(picture).convert("RGB"))
        image = np.ascontiguousarray(rgb[..., ::-1])  # BGR, as PP-OCR was trained
        raw_h, raw_w = image.shape[:2]
        image, scale = self._limit_size(image)
        top = self._letterbox(image)
        if top:
            image = cv2.copyMakeBorder(image, top, top, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        size = det_size(image.shape[0], image.shape[1], self.limit[0], self.limit[1])
        x = det_tensor(image, size)
        if size in self.fixed_sizes:
            detector = self.models.get(_fixed_key(size))
        else:
            detector, x = self.models.get("det"), to_blocks(x)
        t = self._clock("pre", t)
        prob = detector.run(None, {"x": x})[0][0, 0]
        t = self._clock("det", t)
        boxes = reading_order(db_boxes(prob, image.shape[:2], self.db))
        crops = [crop_line(image, b.points) for b in boxes]
        t = self._clock("post", t)
        crops = [self._upright(c) for c in crops]
        t = self._clock("cls", t)
        lines = self._recognise(crops)
        t = self._clock("rec", t)
        out = [
            self._result(box, text, score, top, scale, (raw_h, raw_w))
            for box, (text, score) in zip(boxes, lines, strict=True)
            if score >= self.text_score
        ]
        self._clock("post", t)
        return out

    def _limit_size(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """Return the image resized as rapidocr's global limits say, and (y, x) scale back."""
        cv2 = cv2_module()
        h, w = image.shape[:2]
        scale = (1.0, 1.0)
        for too_big, ratio in (
            (max(h, w) > self.max_side, self.max_side / max(h, w)),
            (min(h, w) < self.min_side, self.min_side / min(h, w)),
        ):
            if too_big:
                h0, w0 = image.shape[:2]
                nh, nw = scaled_to_32(h0, w0, ratio)
                if nh <= 0 or nw <= 0:
                    raise PipelineError(f"{self.task}: a {w}x{h} picture cannot be resized")
                image = cv2.resize(image, (nw, nh))
                scale = (h0 / nh, w0 / nw)
            h, w = image.shape[:2]
        return image, scale

    def _letterbox(self, image: np.ndarray) -> int:
        """Return the black rows added above and below a very flat picture (rapidocr's rule)."""
        h, w = image.shape[:2]
        if h <= self.min_height or w / h > self.max_aspect:
            return int(abs(max(int(w / self.max_aspect), self.min_height) * 2 - h) / 2)
        return 0

    def _upright(self, crop: np.ndarray) -> np.ndarray:
        x = line_tensor(crop, *self.cls_size)[None]
        probs = self.models.get("cls").run(None, {"x": x})[0][0]
        best = int(probs.argmax())
        label = self.cls_labels[best] if best < len(self.cls_labels) else str(best)
        if "180" in label and float(probs[best]) > self.cls_thresh:
            return np.ascontiguousarray(np.rot90(crop, 2))
        return crop

    def _recognise(self, crops: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """Return (text, score) per crop. Each runs alone, padded to the widest line of its
        group of rec_group (crops sorted by aspect ratio): rapidocr's batches, so its text."""
        ratios = [c.shape[1] / float(c.shape[0]) for c in crops]
        order = np.argsort(np.array(ratios), kind="stable")
        lines: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        rec = self.models.get("rec")
        for start in range(0, len(order), self.rec_group):
            group = order[start : start + self.rec_group]
            widest = max([self.rec_min_width / self.rec_height] + [ratios[i] for i in group])
            width = int(self.rec_height * widest)
            for i in group:
                x = line_tensor(crops[i], self.rec_height, width)[None]
                lines[i] = ctc_decode(rec.run(None, {"x": x})[0][0], self.characters)
        return lines

    @staticmethod
    def _result(
        box: TextBox, text: str, score: float, top: int, scale: tuple[float, float],
        raw: tuple[int, int],
    ) -> dict[str, Any]:  # fmt: skip
        points = box.points.astype(np.float64) - np.array([0.0, top])
        points *= np.array([scale[1], scale[0]])
        points[:, 0] = np.clip(points[:, 0], 0, raw[1])
        points[:, 1] = np.clip(points[:, 1], 0, raw[0])
        return {"text": text, "score": score, "box": points.round(1).tolist()}
