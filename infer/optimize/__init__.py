"""The Relax pass pipelines, one named pipeline per target kind."""

from infer.optimize.pipeline import PIPELINES, lowering_pipeline, pipeline_for, run_pipeline

__all__ = ["PIPELINES", "lowering_pipeline", "pipeline_for", "run_pipeline"]
