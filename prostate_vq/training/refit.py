"""ReFiT (Hu et al., "Re-build and Fine-Tune"): cluster the trained encoder's latents into K centroids
(k-means++), install them as a new K-code codebook, then fine-tune the whole model with the same engine.

Every code then starts at the centre of a populated region of latent space, so a collapsed or
half-used codebook becomes (close to) fully used at a smaller K.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch

from prostate_vq.data import make_loader
from prostate_vq.errors import UserInputError
from prostate_vq.files import write_json_atomic
from prostate_vq.models.quantizers import QUANTIZERS
from prostate_vq.runtime import distributed as ddp
from prostate_vq.runtime.checkpoints import load_checkpoint, model_of
from prostate_vq.runtime.device import autocast
from prostate_vq.schema import RefitConfig, RunConfig
from prostate_vq.training.kmeans import kmeans
from prostate_vq.training.vqvae import InitContext, TrainOptions, fit
from prostate_vq.training.vqvae.data import loader_shard
from prostate_vq.training.vqvae.epoch import validate

log = logging.getLogger("prostate_vq.training")

MAX_KMEANS_POINTS = 200_000  # latent vectors sampled for k-means (the full HipMRI train split has ~23 M)


def refit(
    checkpoint,
    out,
    codebook_size: int,
    data=None,
    epochs: int | None = None,
    max_minutes: float | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    max_slices: int | None = None,
    num_workers: int = 0,
    max_steps: int | None = None,
    tensorboard: bool = False,
) -> Path | None:
    """ReFiT run folder (best.pt/last.pt/history.csv/refit.json) fine-tuned from `checkpoint` (None on torchrun
    ranks > 0, as `fit`).

    Spatial size, batch size and losses come from the checkpoint's config; the learning rate from its
    `refit.lr` when the preset has one."""
    checkpoint = Path(checkpoint)
    base = load_checkpoint(checkpoint, kind="model")
    base_model = model_of(base, checkpoint)  # weights of another model, or NaN ones, are one line now, not mid-run
    if int(codebook_size) < 2:
        raise UserInputError(f"--codebook-size must be at least 2, got {codebook_size}")
    if not base_model.supports_refit:  # the quantizer's capability (Quantizer.supports_refit) and the architecture's
        kind = base["config"]["quantizer"].get("kind")
        architecture = base["config"].get("model", {}).get("architecture", "vqvae")
        able = " or ".join(kind for kind, cls in QUANTIZERS.items() if cls.supports_refit)
        raise UserInputError(
            f"ReFiT needs a single learned codebook (quantizer {able}, architecture vqvae); "
            f"this checkpoint uses {kind}/{architecture}",
            checkpoint,
        )
    config = RunConfig.from_sections(
        copy.deepcopy(base["config"]), preset=base.get("preset", "custom"), task=base["task"], seed=int(seed)
    )
    recipe, quantizer, training = config.refit or RefitConfig(), config.quantizer.options, config.training
    quantizer["codebook_size"] = int(codebook_size)
    # Fine-tuning moves the encoder away from the k-means centroids; codes that fall out of use are
    # re-seeded from current encoder outputs, so the re-built codebook stays in use (reference: 100%).
    quantizer["dead_code_threshold"] = max(float(recipe.dead_code_threshold), float(quantizer.get("dead_code_threshold") or 0))
    training.epochs = int(epochs or recipe.epochs or training.epochs)
    max_steps = max_steps or recipe.max_steps  # the base run's budget is not the fine-tuning's
    training.max_steps = int(max_steps) if max_steps else None
    if recipe.lr:
        training.lr = float(recipe.lr)
    info = {
        "base_checkpoint": str(checkpoint.resolve()),
        "base_epoch": int(base.get("epoch", 0)),
        "codebook_size_before": int(base["config"]["quantizer"]["codebook_size"]),
        "codebook_size_after": int(codebook_size),
        "kmeans_points_max": MAX_KMEANS_POINTS,
    }
    # The configuration is `config` (the base run's, rebuilt for K codes); the options only say how the run runs.
    options = TrainOptions(
        out=Path(out),
        data=Path(data) if data else None,
        max_minutes=max_minutes,
        device=device,
        progress=progress,
        max_slices=max_slices,
        num_workers=num_workers,
        tensorboard=tensorboard,
    )
    root = None if data else Path(base["data_root"])

    def init(model, ctx: InitContext) -> dict:
        return {"refit": {**info, **_rebuild_codebook(model, base, ctx)}}

    run = fit(options, config, init=init, data_root=root)
    write_summary(Path(out))
    return run


@torch.no_grad()
def _rebuild_codebook(model, base: dict, ctx: InitContext) -> dict:
    """Load the base weights, measure usage, k-means the training latents, install, measure again."""
    from prostate_vq.models import build_model

    started = time.monotonic()
    base_model = build_model(base["config"], base["task"]).to(ctx.device)
    base_model.load_state_dict(base["model_state"])
    before = validate(base_model, _val_loader(ctx), ctx.criterion, ctx.settings)

    latents = _sample_latents(base_model, ctx)
    cosine = model.quantizer.cosine_codes
    k = int(model.quantizer.codebook_size)
    if latents.shape[0] < k:
        raise UserInputError(
            f"ReFiT: only {latents.shape[0]} latent vectors for {k} codes; use more training slices or a smaller --codebook-size"
        )
    centroids = kmeans(latents, k, iters=25, seed=ctx.seed, cosine=cosine)
    if ctx.dist.enabled:  # identical codebooks on every rank whatever the device arithmetic did
        torch.distributed.broadcast(centroids, src=0)

    # Everything but the codebook (and its K-sized statistics) comes from the base model.
    state = model.state_dict()
    compatible = {
        name: value for name, value in base["model_state"].items() if name in state and state[name].shape == value.shape
    }
    model.load_state_dict(compatible, strict=False)
    model.quantizer.set_codebook(centroids.to(ctx.device))
    after_kmeans = validate(model, _val_loader(ctx), ctx.criterion, ctx.settings)
    return {
        "usage_before_pct": before["codebook_usage_pct"],
        "perplexity_before": before["perplexity"],
        "val_ssim_before": before["val_ssim"],
        "val_dice_before": before["val_dice"],
        "usage_after_kmeans_pct": after_kmeans["codebook_usage_pct"],
        "perplexity_after_kmeans": after_kmeans["perplexity"],
        "val_ssim_after_kmeans": after_kmeans["val_ssim"],
        "val_dice_after_kmeans": after_kmeans["val_dice"],
        "kmeans_points": int(latents.shape[0]),
        "kmeans_seconds": time.monotonic() - started,
    }


def _val_loader(ctx: InitContext):
    return make_loader(ctx.val_ds, ctx.batch_size, seed=ctx.seed, shard=loader_shard(ctx.dist))


def _sample_latents(model, ctx: InitContext) -> torch.Tensor:
    """Pre-quantisation vectors (codebook space) of the training split, uniformly subsampled with a
    seeded generator so that at most MAX_KMEANS_POINTS are kept. Every rank encodes the full split."""
    model.eval()
    loader = make_loader(ctx.train_ds, ctx.batch_size, seed=ctx.seed)
    generator = torch.Generator().manual_seed(ctx.seed)
    augment = getattr(ctx.train_ds, "augment", None)
    chunks, keep = [], None
    try:
        ctx.train_ds.augment = None  # cluster the data itself, not random augmentations of it
        for batch in loader:
            x = model.prepare_input({k: batch[k].to(ctx.device) for k in ("image", "label") if k in batch})
            with autocast(ctx.device):
                latents = model(x).latents
            if keep is None:
                per_slice = latents.shape[2] * latents.shape[3]
                keep = min(1.0, MAX_KMEANS_POINTS / max(1, len(ctx.train_ds) * per_slice))
            vectors = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
            if keep < 1.0:
                vectors = vectors[(torch.rand(vectors.shape[0], generator=generator) < keep).to(ctx.device)]
            chunks.append(vectors)
    finally:
        ctx.train_ds.augment = augment
    return torch.cat(chunks)


def write_summary(out: Path) -> None:
    """refit.json: usage before, after k-means and after fine-tuning (best.pt), for the report."""
    if not (out / "best.pt").exists() or not ddp.is_main_process():
        return
    best = load_checkpoint(out / "best.pt", kind="model")
    info = dict(best.get("refit", {}))
    info.update(
        {
            "usage_after_finetune_pct": best["metrics"].get("codebook_usage_pct"),
            "perplexity_after_finetune": best["metrics"].get("perplexity"),
            "val_ssim_after_finetune": best["metrics"].get("val_ssim"),
            "val_dice_after_finetune": best["metrics"].get("val_dice"),
            "best_epoch": best["epoch"],
        }
    )
    write_json_atomic(out / "refit.json", info)
    log.info(
        "ReFiT: codebook usage %.1f%% (K=%d) -> %.1f%% after k-means -> %.1f%% after fine-tuning (K=%d)",
        info.get("usage_before_pct", math.nan),
        info.get("codebook_size_before", 0),
        info.get("usage_after_kmeans_pct", math.nan),
        info.get("usage_after_finetune_pct") or math.nan,
        info.get("codebook_size_after", 0),
    )
