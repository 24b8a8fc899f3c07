"""Generative prior over VQ-VAE codes: autoregressive networks (gated PixelCNN, causal transformer),
code export (`encode`), training (`train-prior`) and sampling (`sample`)."""

from __future__ import annotations

from prostate_vq.prior.base import CodePrior
from prostate_vq.prior.checks import sample_checks
from prostate_vq.prior.codes import CodeLayout, encode_dataset, encode_dataset_tensors, read_codes
from prostate_vq.prior.networks import ARCHS, build_prior
from prostate_vq.prior.pixelcnn import GatedPixelCNN
from prostate_vq.prior.sample import decode_codes, load_prior, sample
from prostate_vq.prior.transformer import CodeTransformer

__all__ = [
    "ARCHS",
    "CodeLayout",
    "CodePrior",
    "CodeTransformer",
    "GatedPixelCNN",
    "build_prior",
    "decode_codes",
    "encode_dataset",
    "encode_dataset_tensors",
    "load_prior",
    "read_codes",
    "sample",
    "sample_checks",
    "train_prior",
]


def __getattr__(name: str):
    # Loaded on first use: it pulls in the training engine, which the networks and sampling do not need.
    if name == "train_prior":
        from prostate_vq.prior.train import train_prior

        return train_prior
    raise AttributeError(f"module 'prostate_vq.prior' has no attribute {name!r}")
