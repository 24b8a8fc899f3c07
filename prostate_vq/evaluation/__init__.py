"""Checkpoint evaluation: reconstruction, segmentation and codebook metrics, per-slice tables, figures."""

from prostate_vq.evaluation.evaluate import evaluate_checkpoint
from prostate_vq.evaluation.results import EvaluationResult

__all__ = ["EvaluationResult", "evaluate_checkpoint"]
