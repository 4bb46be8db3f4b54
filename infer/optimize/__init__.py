"""The Relax pass pipelines, one named pipeline per target kind."""

from infer.optimize.pipeline import PIPELINES, pipeline_for, run_pipeline

__all__ = ["PIPELINES", "pipeline_for", "run_pipeline"]
