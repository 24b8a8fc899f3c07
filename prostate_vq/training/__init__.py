"""Training, cut along its two seams: the engine (training.engine: the loop and what it writes to the run
folder) and VQ-VAE training (training.vqvae: the engine's plug-in), with ReFiT beside it (training.refit,
training.kmeans) and `train` (training.stages) on top: `train(TrainOptions(...), RunRequest(...))`, how a run
runs apart from what it trains (a RunRequest, or a RunConfig from `resolve`). Checkpoint I/O, device, torchrun and
seeding are prostate_vq.runtime's, below training."""

# The checkpoint helpers, HISTORY_COLUMNS, EarlyStopping and kmeans were public here before the runtime package
# existed; they stay importable from prostate_vq.training so users' scripts keep working.
from prostate_vq.runtime.checkpoints import load_checkpoint, load_model, save_checkpoint
from prostate_vq.runtime.run_format import HISTORY_COLUMNS
from prostate_vq.training.config import RunRequest, resolve
from prostate_vq.training.engine.early_stopping import EarlyStopping
from prostate_vq.training.kmeans import kmeans
from prostate_vq.training.refit import refit
from prostate_vq.training.stages import train
from prostate_vq.training.vqvae import TrainOptions, fit

__all__ = [
    "HISTORY_COLUMNS",
    "EarlyStopping",
    "RunRequest",
    "TrainOptions",
    "fit",
    "kmeans",
    "load_checkpoint",
    "load_model",
    "refit",
    "resolve",
    "save_checkpoint",
    "train",
]
