"""prostate-vq: VQ-VAE variants for 2D prostate MRI slices (HipMRI)."""

__version__ = "0.1.0"


def from_pretrained(folder, device="cpu"):
    """The model of a folder written by `prostate-vq export` (safetensors + config.json, no pickle).
    Imported on call so that `import prostate_vq` stays light."""
    from prostate_vq.export.pretrained import from_pretrained as load

    return load(folder, device)
