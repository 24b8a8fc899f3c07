"""Runtime services under training that every layer above it needs: checkpoint I/O and the model a checkpoint
describes, device choice and precision, torchrun's process group, seeding, and the per-slice scores training's
validation and evaluation share. Here, below training, so evaluation and reporting read checkpoints and pick a
device without importing the training loop (an import-linter contract says so)."""

from prostate_vq.runtime.checkpoints import load_checkpoint, load_model, save_checkpoint

__all__ = ["load_checkpoint", "load_model", "save_checkpoint"]
