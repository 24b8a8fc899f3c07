"""VQ-VAE training, the engine's plug-in: `fit` (data, model, task loss, masking, validation, resume policy) and
`TrainOptions` (runtime settings; what a run trains is training.config's RunRequest or RunConfig). ReFiT
(training.refit) fine-tunes through the same `fit`."""

from prostate_vq.training.vqvae.fit import TrainOptions, fit
from prostate_vq.training.vqvae.plugin import InitContext, VQVAETraining

__all__ = ["InitContext", "TrainOptions", "VQVAETraining", "fit"]
