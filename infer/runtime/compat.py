"""Whether an artifact may run on this host: TVM version, CPU features, device."""

from __future__ import annotations

from infer.artifact.manifest import ArtifactManifest
from infer.errors import ArtifactError
from infer.target import host_cpu_features

__all__ = ["check_compatible"]


def check_compatible(manifest: ArtifactManifest, where: str) -> None:
    """Raise ArtifactError naming the field, its value and the host's when the artifact cannot run here."""
    import tvm

    built = manifest.versions.get("tvm")
    if built != tvm.__version__:
        raise ArtifactError(
            f"{where}: field versions.tvm is {built!r}, this host has TVM {tvm.__version__!r}; recompile"
        )
    kind = manifest.target.get("kind")
    if kind == "llvm":
        needed = set(manifest.target.get("cpu_features", []))
        missing = sorted(needed - host_cpu_features())
        if missing:
            have = ", ".join(sorted(host_cpu_features())) or "none"
            raise ArtifactError(
                f"{where}: field target.cpu_features needs {', '.join(missing)}, which this host's CPU "
                f"lacks (it has {have}); recompile on this host or with an older -mcpu"
            )
    elif kind != "cuda":
        raise ArtifactError(f"{where}: field target.kind is {kind!r}, expected 'llvm' or 'cuda'")
