"""ONNX-level work: loading, checks, shapes, names, and which ops the importer takes."""
