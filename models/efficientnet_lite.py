"""EfficientNet-Lite (ml-illustrated's PyTorch port of the TensorFlow models) exported to ONNX."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from infer.errors import ModelError

# The port's package, imported from its wheel file.
CODE_PACKAGE = "efficientnet_lite_pytorch"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def require_torch() -> Any:
    """Return torch; ModelError naming the extra to install when it is missing."""
    from infer.frontends import require

    return require("pytorch")


@contextlib.contextmanager
def wheel_on_path(wheel: Path, package: str) -> Iterator[None]:
    """Import package from a pure-Python wheel file (zipimport) for the block, then forget it."""
    sys.path.insert(0, str(wheel))
    try:
        yield
    finally:
        sys.path.remove(str(wheel))
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]


def build_module(weights: Path, code: Path | None, variant: str = "efficientnet-lite0") -> Any:
    """Return the torch module of the variant with the weights file's state dict, in eval mode."""
    torch = require_torch()
    if code is None:
        raise ModelError(
            f"{variant}: the recipe names no wheel with the model code ([export.code])"
        )
    with wheel_on_path(code, CODE_PACKAGE):
        from efficientnet_lite_pytorch import EfficientNet

        model: Any = EfficientNet.from_name(variant)
    # weights_only: a state dict of tensors, no pickled code runs.
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"{variant}: {weights.name} does not fit the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval()


def export(
    weights: Path, code: Path | None, variant: str = "efficientnet-lite0", image_size: int = 224
) -> onnx.ModelProto:
    """Return the ImageNet classifier variant exported to ONNX, batch symbolic."""
    from infer.frontends.pytorch import convert

    torch = require_torch()
    model = build_module(weights, code, variant)
    converted = convert(
        model,
        example_inputs=(torch.zeros(1, 3, image_size, image_size),),
        dynamic_axes={INPUT_NAME: {0: "batch"}},
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
    )
    return converted.proto
