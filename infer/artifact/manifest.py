"""The artifact manifest: what was compiled, for what, with which tools, and the hash of every file."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infer.errors import ArtifactError
from infer.signature import TensorSpec

__all__ = [
    "FALLBACK_DIR",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "ORT_SEGMENT",
    "TVM_SEGMENT",
    "TVM_SEGMENT_DIR",
    "ArtifactManifest",
    "sha256_file",
]

FORMAT_NAME = "infer-artifact"
FORMAT_VERSION = 2
# Version 1 had no segments: it reads as one TVM segment at the root.
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
LIBRARY_FILE = "lib.so"
PARAMS_FILE = "params.safetensors"
# With segments: TVM segment i in tvm<i>/ (lib.so, params.safetensors), ONNX Runtime ones in here.
TVM_SEGMENT_DIR = "tvm"
FALLBACK_DIR = "fallback"
# The kinds of segment (the same names as infer.graph.partition's).
TVM_SEGMENT = "tvm"
ORT_SEGMENT = "onnxruntime"
HASH_CHUNK_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ArtifactManifest:
    """The manifest.json of an artifact directory."""

    model_name: str
    model_sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target: dict[str, Any]
    versions: dict[str, str]
    pipeline: dict[str, Any]
    params: list[str]
    segments: list[dict[str, Any]] = field(default_factory=list)
    node_count: int = 0  # nodes after legalization, constants not counted
    shape_overrides: dict[str, list[int | str]] = field(default_factory=dict)
    model_source: str = ""
    frontend: dict[str, Any] | None = None  # framework, version, exporter, opset
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    tuning_database: str | None = None
    # Model inputs that are indices, with the dims they index (infer.graph.indices).
    index_checks: list[dict[str, Any]] = field(default_factory=list)
    compile_seconds: float = 0.0
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as JSON data."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "model": {
                "name": self.model_name,
                "sha256": self.model_sha256,
                "source": self.model_source,
                "frontend": self.frontend,
            },
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "shape_overrides": self.shape_overrides,
            "target": self.target,
            "versions": self.versions,
            "pipeline": self.pipeline,
            "tuning_database": self.tuning_database,
            "params": self.params,
            "segments": self.segments,
            "nodes": self.node_count,
            "index_checks": self.index_checks,
            "files": self.files,
            "parity": self.parity,
            "compile_seconds": self.compile_seconds,
            "created": self.created,
        }

    @property
    def precision(self) -> str:
        """Return what the library's dense convolutions and matmuls on weights compute in."""
        return str(self.pipeline.get("precision", "fp32"))

    @classmethod
    def from_json(cls, data: Any, where: str) -> ArtifactManifest:
        """Return the manifest parsed from JSON data; ArtifactError naming the bad field."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: manifest must be a JSON object")
        if data.get("format") != FORMAT_NAME:
            raise ArtifactError(
                f"{where}: field 'format' is {data.get('format')!r}, expected {FORMAT_NAME!r}"
            )
        if data.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise ArtifactError(
                f"{where}: field 'format_version' is {data.get('format_version')!r}, "
                f"this infer reads {READABLE_FORMAT_VERSIONS}"
            )
        try:
            files = data["files"]
            if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()
            ):
                raise TypeError("files")
            return cls(
                model_name=str(data["model"]["name"]),
                model_sha256=str(data["model"]["sha256"]),
                model_source=str(data["model"].get("source", "")),
                frontend=data["model"].get("frontend"),
                inputs=[TensorSpec.from_json(s) for s in data["inputs"]],
                outputs=[TensorSpec.from_json(s) for s in data["outputs"]],
                target=dict(data["target"]),
                versions={str(k): str(v) for k, v in data["versions"].items()},
                pipeline=dict(data["pipeline"]),
                params=[str(p) for p in data["params"]],
                segments=[_segment(s) for s in data.get("segments", [])],
                node_count=int(data.get("nodes", 0)),
                index_checks=[_index_check(c) for c in data.get("index_checks", [])],
                shape_overrides={
                    str(k): [d if isinstance(d, str) else int(d) for d in v]
                    for k, v in data["shape_overrides"].items()
                },
                files=dict(files),
                parity=data.get("parity"),
                tuning_database=data.get("tuning_database"),
                compile_seconds=float(data.get("compile_seconds", 0.0)),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{where}: manifest is malformed (field {exc})") from None

    @classmethod
    def read(cls, directory: Path) -> ArtifactManifest:
        """Return the manifest of an artifact directory."""
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(f"{directory}: not an artifact (no {MANIFEST_FILE})")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(
                f"{path}: {path.stat().st_size} bytes, larger than {MAX_MANIFEST_BYTES}"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(data, str(path))

    def write(self, directory: Path) -> None:
        """Write manifest.json into directory atomically."""
        tmp = directory / (MANIFEST_FILE + ".tmp")
        tmp.write_text(
            json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8"
        )
        os.replace(tmp, directory / MANIFEST_FILE)

    def hash_files(self, directory: Path) -> None:
        """Record the sha256 of every file of the artifact (the manifest excepted)."""
        self.files = {
            str(p.relative_to(directory)): sha256_file(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE
        }

    def placement_totals(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Return (nodes per segment kind, FLOPs per kind, ONNX Runtime node count per op type).

        An artifact without segments runs all of its node_count nodes on TVM.
        """
        nodes = {TVM_SEGMENT: 0, ORT_SEGMENT: 0}
        flops = {TVM_SEGMENT: 0, ORT_SEGMENT: 0}
        ort_ops: dict[str, int] = {}
        for segment in self.segments:
            nodes[segment["kind"]] += int(segment.get("nodes", 0))
            flops[segment["kind"]] += int(segment.get("flops", 0))
            if segment["kind"] == ORT_SEGMENT:
                for op, n in segment.get("op_types", {}).items():
                    ort_ops[op] = ort_ops.get(op, 0) + int(n)
        if not self.segments:
            nodes[TVM_SEGMENT] = self.node_count
        return nodes, flops, ort_ops

    def required_files(self) -> list[str]:
        """Return the files the runtime opens: libraries, weights and fallback models."""
        if not self.segments:
            return [LIBRARY_FILE, PARAMS_FILE]
        files: list[str] = []
        for segment in self.segments:
            if segment["kind"] == TVM_SEGMENT:
                files += [f"{segment['dir']}/{LIBRARY_FILE}", f"{segment['dir']}/{PARAMS_FILE}"]
            else:
                files.append(segment["file"])
        return files

    def verify_files(self, directory: Path) -> None:
        """Check every listed file's sha256 and that no unlisted file is present; else ArtifactError."""
        for required in self.required_files():
            if required not in self.files:
                raise ArtifactError(f"{directory}: manifest lists no {required!r}")
        real_dir = directory.resolve()
        for rel, expected in self.files.items():
            path = (directory / rel).resolve()
            if real_dir not in path.parents:
                raise ArtifactError(f"{directory}: manifest file {rel!r} is outside the artifact")
            if not path.is_file():
                raise ArtifactError(f"{directory}: file {rel!r} listed in the manifest is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise ArtifactError(
                    f"{directory}: file {rel!r} has sha256 {actual[:16]}..., the manifest says "
                    f"{expected[:16]}... (modified or damaged)"
                )
        extra = [
            str(p.relative_to(directory))
            for p in directory.rglob("*")
            if p.is_file()
            and p.name != MANIFEST_FILE
            and str(p.relative_to(directory)) not in self.files
        ]
        code = [e for e in extra if e.endswith((".so", ".dylib", ".dll"))]
        if code:
            raise ArtifactError(
                f"{directory}: library files not listed in the manifest: {', '.join(code)}"
            )


def _index_check(data: Any) -> dict[str, Any]:
    """Return a manifest index check, checked: TypeError when malformed."""
    if not isinstance(data, dict) or not all(
        isinstance(data[k], str) for k in ("input", "op", "node")
    ):
        raise TypeError("index_checks")
    extents = data["extents"]
    if not isinstance(extents, list) or not all(isinstance(e, int | str) for e in extents):
        raise TypeError("index_checks.extents")
    return dict(data)


def _segment(data: Any) -> dict[str, Any]:
    """Return a manifest segment entry, checked: TypeError/KeyError/ValueError when malformed."""
    if not isinstance(data, dict):
        raise TypeError("segments")
    kind = data["kind"]
    names = ("inputs", "outputs", *(("params",) if kind == TVM_SEGMENT else ()))
    for key in names:
        if not isinstance(data[key], list) or not all(isinstance(n, str) for n in data[key]):
            raise TypeError(f"segments.{key}")
    where = data["dir"] if kind == TVM_SEGMENT else data["file"] if kind == ORT_SEGMENT else None
    if not isinstance(where, str) or not where:
        raise ValueError(f"segments.kind {kind!r}")
    return dict(data)
