"""Training: the one engine behind `prostate-vq train`, ReFiT and the prior; checkpoints and torchrun support."""

from prostate_vq.training.checkpoints import load_checkpoint, load_model, save_checkpoint
from prostate_vq.training.command import train
from prostate_vq.training.config import TRAINING_DEFAULTS, resolve_config
from prostate_vq.training.early_stopping import EarlyStopping
from prostate_vq.training.history import HISTORY_COLUMNS
from prostate_vq.training.kmeans import kmeans
from prostate_vq.training.refit import refit
from prostate_vq.training.trainer import TrainOptions, fit

__all__ = [
    "HISTORY_COLUMNS",
    "TRAINING_DEFAULTS",
    "EarlyStopping",
    "TrainOptions",
    "fit",
    "kmeans",
    "load_checkpoint",
    "load_model",
    "refit",
    "resolve_config",
    "save_checkpoint",
    "train",
]
