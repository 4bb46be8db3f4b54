"""The artifact directory format, its manifest, and the compile cache."""

from infer.artifact.manifest import FORMAT_VERSION, MANIFEST_FILE, ArtifactManifest

__all__ = ["FORMAT_VERSION", "MANIFEST_FILE", "ArtifactManifest"]
