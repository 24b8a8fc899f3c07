"""prostate-vq: VQ-VAE variants for 2D prostate MRI slices (HipMRI)."""

__version__ = "0.1.0"
