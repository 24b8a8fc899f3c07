"""Training, cut along its two seams: the engine (training.engine: the loop and what it writes to the run
folder) and VQ-VAE training (training.vqvae: the engine's plug-in), with ReFiT beside it (training.refit,
training.kmeans) and `train` (training.stages) on top. Checkpoint I/O, device, torchrun and seeding are
prostate_vq.runtime's, below training."""

from prostate_vq.training.config import resolve
from prostate_vq.training.refit import refit
from prostate_vq.training.stages import train
from prostate_vq.training.vqvae import TrainOptions, fit

__all__ = ["TrainOptions", "fit", "refit", "resolve", "train"]
