"""One VQ-VAE training epoch (masked patches when training.mask_ratio says so) and one validation pass. Losses
stay on the device; the host reads them every `sync_every` steps (progress bar, NaN check, time budget across
ranks) and once at the end. The epoch's result is the engine's `EpochResult`; the plug-in adds validation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from prostate_vq.errors import TrainingDiverged
from prostate_vq.models.quantizers.base import Quantizer
from prostate_vq.models.vqvae import VQVAE
from prostate_vq.runtime.device import autocast, to_device
from prostate_vq.runtime.distributed import DistContext, all_reduce_sum, unwrap
from prostate_vq.training.engine import EpochResult
from prostate_vq.training.vqvae.losses import split_loss
from prostate_vq.training.vqvae.validation import ValidationAccumulator


@dataclass
class StepSettings:
    device: torch.device
    channels_last: bool = False
    mask_ratio: float = 0.0
    mask_patch: int = 8
    grad_clip: float | None = None
    sync_every: int = 20
    deadline: float | None = None  # time.monotonic() value after which no new step starts
    warmup_steps: int = 0  # linear learning-rate warmup over the run's first optimizer steps
    steps_before: int = 0  # optimizer steps of the run before this epoch (the engine sets it)
    max_steps: int | None = None  # the run's optimizer-step budget: the epoch ends when it is reached
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None  # per step (training.vqvae.schedule.StepCosine)
    dist: DistContext = field(default_factory=DistContext)


def core_model(model: torch.nn.Module) -> VQVAE:
    """The VQ-VAE inside its DDP / torch.compile wrappers (every architecture build_model makes is one)."""
    core = unwrap(model)
    if not isinstance(core, VQVAE):
        raise TypeError(f"expected a VQVAE (models.build_model), got {type(core).__name__}")
    return core


def _model_input(model, batch: dict, settings: StepSettings):
    image = to_device(batch["image"], settings.device, settings.channels_last)
    label = batch.get("label")
    label = to_device(label, settings.device, False) if label is not None else None
    x = core_model(model).prepare_input({"image": image, "label": label} if label is not None else {"image": image})
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, image, label


def _diverged(value: float, epoch: int, step: int) -> TrainingDiverged:
    kind = "NaN" if math.isnan(value) else "Inf"
    return TrainingDiverged(
        f"the training loss became {kind} in epoch {epoch} (by step {step}); "
        "training stopped. Lower --lr (it applies to --resume too) or check the data"
    )


def _step_with_warmup(optimizer, step: int, warmup_steps: int) -> None:
    """optimizer.step() at lr x step / warmup_steps during the warmup: the encoder then cannot outrun a
    codebook that Adam moves by about lr per step (the first steps' large gradients blow latents away)."""
    if step >= warmup_steps:
        optimizer.step()
        return
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * step / warmup_steps
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, scheduled):
        group["lr"] = lr


def train_one_epoch(model, loader, criterion, optimizer, settings: StepSettings, epoch: int, bar=None) -> EpochResult:
    """The epoch's training half: its row holds train_loss and train_quantizer_loss; `monitor` is NaN until the
    plug-in validates."""
    model.train()
    device = settings.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    aux_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps, out_of_time, out_of_steps = 0, False, False
    for step, batch in enumerate(loader, start=1):
        x, image, label = _model_input(model, batch, settings)
        x = mask_patches(x, settings.mask_ratio, settings.mask_patch)
        with autocast(device):
            output = model(x)
            loss, parts = criterion(output, image, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        _step_with_warmup(optimizer, settings.steps_before + step, settings.warmup_steps)
        if settings.scheduler is not None:
            settings.scheduler.step()
        loss_sum += loss.detach().double()
        aux_sum += split_loss(parts)[1].detach().double()
        steps = step
        late = settings.deadline is not None and time.monotonic() >= settings.deadline
        if step % settings.sync_every == 0 or (late and not settings.dist.enabled):
            # One small host read every `sync_every` steps: NaN check, progress, stop flag agreed by all ranks.
            flags = torch.stack([loss_sum / step, loss_sum.new_tensor(float(late))])
            flags = all_reduce_sum(flags, settings.dist) if settings.dist.enabled else flags
            mean_loss, late_any = (flags / settings.dist.world_size).tolist()
            if not math.isfinite(mean_loss):
                raise _diverged(mean_loss, epoch, step)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4g}", refresh=False)
            if late_any > 0:
                out_of_time = True
        if bar is not None:
            bar.update(1)
        out_of_steps = settings.max_steps is not None and settings.steps_before + step >= settings.max_steps
        if out_of_time or out_of_steps:
            break
    totals = torch.stack([loss_sum, aux_sum, loss_sum.new_tensor(float(steps))])
    totals = all_reduce_sum(totals, settings.dist)
    loss_total, aux_total, step_total = totals.tolist()
    train_loss = loss_total / step_total if step_total else math.nan
    if not math.isfinite(train_loss):
        raise _diverged(train_loss, epoch, steps)
    row = {"train_loss": train_loss, "train_quantizer_loss": aux_total / step_total if step_total else math.nan}
    return EpochResult(row, math.nan, steps, out_of_time=out_of_time, out_of_steps=out_of_steps)


@torch.no_grad()
def validate(model, loader, criterion, settings: StepSettings) -> dict:
    """Validation task loss (no quantizer terms), quantizer loss, SSIM, Dice and code statistics over the whole split.

    All ranks together."""
    model.eval()
    core = core_model(model)
    acc = ValidationAccumulator(core.num_codes, settings.device)
    for batch in loader:
        x, image, label = _model_input(model, batch, settings)
        with autocast(settings.device):
            output = core(x)  # no DDP forward: nothing to synchronise in eval
            _, parts = criterion(output, image, label)
        task_loss, quantizer_loss = split_loss(parts)
        acc.add(task_loss, output, image, label, core.code_counts(output.indices), quantizer_loss)
    totals = all_reduce_sum(acc.totals(), settings.dist)
    return acc.compute(totals)


def restarted_codes(model) -> int:
    """Dead codes the quantizers restarted since the last call (they count, we collect)."""
    return sum(int(m.pop_restarted()) for m in unwrap(model).modules() if isinstance(m, Quantizer))


def mask_patches(x: Tensor, ratio: float, patch: int) -> Tensor:
    """Masked training: zero a `ratio` share of `patch` x `patch` squares of each sample (independently per sample).

    The loss still compares with the full target. Patch = the model's downsample factor, so each hidden square is
    one latent cell. Uses the global torch RNG of x's device, which is seeded and stored in last.pt.
    """
    if ratio <= 0:
        return x
    b, _, h, w = x.shape
    gh, gw = -(-h // patch), -(-w // patch)
    keep = (torch.rand(b, 1, gh, gw, device=x.device) >= ratio).to(x.dtype)
    keep = F.interpolate(keep, scale_factor=patch, mode="nearest")[:, :, :h, :w]
    return x * keep
