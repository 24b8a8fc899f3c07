"""`prostate-vq train`: preset -> model, data -> loaders, epochs with validation, early stopping,
atomic best/last checkpoints, exact resume, a wall-clock budget, and (under torchrun) DDP."""

from __future__ import annotations

import copy
import gc
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prostate_vq.errors import TrainingDiverged, UserInputError
from prostate_vq.files import folder_lock
from prostate_vq.models.rate import level_health
from prostate_vq.training import distributed as ddp
from prostate_vq.training.checkpoints import FORMAT_VERSION, load_checkpoint, plain
from prostate_vq.training.config import (
    MONITOR_KEYS,
    TRAINING_DEFAULTS,
    check_options,
    check_training_config,
    downsample_factor,
    make_optimizer,
    make_scheduler,
    resolve_config,
)
from prostate_vq.training.data_loading import first_batch, load_datasets, make_loader
from prostate_vq.training.early_stopping import EarlyStopping
from prostate_vq.training.loop import StepSettings, restarted_codes, train_one_epoch, validate
from prostate_vq.training.losses import TaskLoss
from prostate_vq.training.resume import announce_resume, refuse_other_data, retune_schedule
from prostate_vq.training.run_files import (
    RunWriter,
    epoch_bar,
    model_summary_text,
    record_rank_sync,
    step_bar,
    versions,
    warnings_above_bars,
)
from prostate_vq.training.runtime import configure_cpu_threads, resolve_device
from prostate_vq.training.seeding import capture_rng_state, restore_rng_state, seed_everything

__all__ = ["TRAINING_DEFAULTS", "CodebookCollapseWarning", "InitContext", "TrainOptions", "fit", "resolve_config", "train"]

log = logging.getLogger("prostate_vq.training")

COLLAPSE_USAGE_PCT = 10.0


@dataclass
class TrainOptions:
    """Exactly what `prostate-vq train` passes (see cli._train_options); None = preset / default."""

    out: Path
    data: Path | None = None
    preset: str = "default"
    task: str = "image"
    epochs: int | None = None
    max_minutes: float | None = None
    spatial_size: tuple[int, int] | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    patience: int | None = None
    monitor: str = "loss"
    mask_ratio: float = 0.0
    device: str = "auto"
    resume: bool = False
    overrides: list[str] = field(default_factory=list)
    max_slices: int | None = None
    num_workers: int = 0
    compile: bool = False
    tensorboard: bool = False
    progress: bool = True


@dataclass
class InitContext:
    """What an `init(model, context)` hook of `fit` may use (ReFiT encodes and validates with it)."""

    device: torch.device
    dist: ddp.DistContext
    train_ds: object
    val_ds: object
    batch_size: int
    criterion: TaskLoss
    settings: StepSettings
    seed: int


def train(options: TrainOptions) -> Path | None:
    """Train one preset; presets with a `refit` section continue with ReFiT in the same command
    (stage 1 in RUN/base, the final model in RUN). Returns the run folder (None on torchrun ranks > 0)."""
    check_options(options)
    base_last = Path(options.out) / "base" / "last.pt"
    if options.resume and base_last.exists():
        from prostate_vq.training.refit import train_then_refit

        return train_then_refit(options, load_checkpoint(base_last, kind="resume")["config"])
    cfg = None if options.resume else resolve_config(options)
    if cfg is not None and cfg.get("refit"):
        from prostate_vq.training.refit import train_then_refit

        return train_then_refit(options, cfg)
    return fit(options, cfg)


def fit(options: TrainOptions, cfg: dict | None = None, *, init: Callable | None = None,
        extra_payload: dict | None = None, data_root: Path | None = None) -> Path | None:
    """The training engine. `init(model, InitContext) -> dict` prepares a fresh model (ReFiT installs its
    codebook there) and returns payload entries; `extra_payload` is stored in every checkpoint of the run.
    The run folder is locked meanwhile (by rank 0 under torchrun): a second process is refused."""
    with folder_lock(options.out, active=ddp.is_main_process(), create=not options.resume):
        return _fit(options, cfg, init=init, extra_payload=extra_payload, data_root=data_root)


def _fit(options: TrainOptions, cfg: dict | None, *, init: Callable | None, extra_payload: dict | None,
         data_root: Path | None) -> Path | None:
    started = time.monotonic()
    out = Path(options.out)
    resume = None
    if options.resume:
        if not (out / "last.pt").is_file():
            raise UserInputError("--resume: no last.pt in the run folder", out)
        resume = load_checkpoint(out / "last.pt", kind="resume")
        cfg = copy.deepcopy(resume["config"])
        for key in ("epochs", "patience", "lr"):  # a resumed run may be extended, made more patient or slower
            if getattr(options, key) is not None:
                cfg["training"][key] = getattr(options, key)
    elif (out / "last.pt").exists():
        raise UserInputError("the run folder already holds a run (last.pt): pass --resume to continue it "
                             "or choose another --out", out)
    else:
        cfg = cfg if cfg is not None else resolve_config(options)

    check_training_config(cfg["training"], resume["task"] if resume else options.task)
    dist_ctx, device, created = ddp.init_distributed(resolve_device(options.device))
    run, ok = None, False
    try:
        run = _Run(options, cfg, resume, dist_ctx, device, started, extra_payload or {})
        run.setup(init, data_root)
        result = run.train()
        ok = True
        return result
    finally:
        if dist_ctx.enabled:
            # The DDP reducer must be gone before its process group: destroying it afterwards can hang.
            if run is not None:
                run.release()
            del run
            gc.collect()
        if created:
            ddp.cleanup(dist_ctx, barrier=ok)  # after an error the other ranks may never reach a barrier


class _Run:
    """One training run: its data, model, optimizer, early stopping and files."""

    def __init__(self, options, cfg, resume, dist_ctx, device, started, extra_payload):
        self.options, self.cfg, self.resume = options, cfg, resume
        self.training = cfg["training"]
        self.task = resume["task"] if resume else options.task
        self.seed = int(resume.get("seed", options.seed)) if resume else int(options.seed)
        self.dist, self.device, self.started = dist_ctx, device, started
        self.extra_payload = extra_payload
        self.out = Path(options.out)
        self.history: list[dict] = []
        self.start_epoch = 1
        self.step = 0  # optimizer steps over the whole run (patience and min_steps count these)

    def release(self) -> None:
        """Drop the model (and its DDP wrapper), optimizer and data, even if a traceback keeps `self` alive."""
        for name in ("model", "core", "optimizer", "scheduler", "train_ds", "val_ds"):
            self.__dict__.pop(name, None)

    # --- setup --------------------------------------------------------------------------------
    def setup(self, init: Callable | None, data_root) -> None:
        from prostate_vq.models import build_model

        training, device = self.training, self.device
        if device.type == "cpu":
            configure_cpu_threads(self.options.num_workers, 1)
        else:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.root = self._data_root(data_root)
        self.train_ds, self.val_ds = load_datasets(self.root, self.task, training, self.options.max_slices)

        seed_everything(self.seed)
        model = build_model(self.cfg, self.task).to(device)
        if hasattr(model, "code_shape"):  # a spatial size the network cannot divide fails now, as exit 2
            model.code_shape(tuple(int(s) for s in training["spatial_size"]))
        self.criterion = TaskLoss(self.task, training["l1_weight"], training["dice_weight"], training["seg_weight"],
                                  training["ssim_weight"])
        self.settings = StepSettings(device=device, channels_last=device.type == "cuda",
                                     mask_ratio=float(training["mask_ratio"]),
                                     mask_patch=downsample_factor(self.cfg, model),
                                     grad_clip=training.get("grad_clip"), dist=self.dist,
                                     warmup_steps=int(training["warmup_steps"]))
        self.batch_size = int(training["batch_size"])
        self.writer = RunWriter(self.out, self.dist.is_main, self.options.tensorboard)  # inputs checked by now
        if init is not None and self.resume is None:
            context = InitContext(device, self.dist, self.train_ds, self.val_ds, self.batch_size, self.criterion,
                                  self.settings, self.seed)
            self.extra_payload.update(init(model, context) or {})
        if self.settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(model, training)
        self.scheduler = make_scheduler(self.optimizer, training)
        self.stopper = EarlyStopping(monitor=training["monitor"], patience=int(training["patience"]),
                                     min_delta=float(training["min_delta"]),
                                     patience_steps=int(training["patience_steps"]),
                                     min_steps=int(training["min_steps"]))
        if self.resume is not None:
            self._restore(model)
        else:
            # On a copy and on every rank: a forward pass may k-means-initialise a codebook (with collectives
            # under DDP), which must neither touch the real model nor leave rank 0 alone in a collective.
            example = model.prepare_input(first_batch(self.val_ds, device))
            self.writer.summary(model_summary_text(copy.deepcopy(model), example))
        self.core = model
        if self.options.compile:
            model = torch.compile(model)
        self.model = ddp.wrap_model(model, self.dist, device, bool(training.get("find_unused_parameters", False)))
        self.base_payload = {
            "format_version": FORMAT_VERSION, "config": self.cfg,
            "preset": self.resume["preset"] if self.resume else self.options.preset,
            "task": self.task, "spatial_size": [int(s) for s in training["spatial_size"]],
            "intensity": plain(self._intensity()), "seed": self.seed, "data_root": str(self.root),
            "versions": versions(), **plain(self.extra_payload),
        }
        self.writer.config(self.cfg, {"preset": self.base_payload["preset"], "task": self.task,
                                      "data_root": str(self.root), "seed": self.seed})

    def _data_root(self, data_root) -> Path:
        """Absolute, so that a checkpoint resumes and evaluates from any working directory."""
        if self.options.data is not None:
            root = Path(self.options.data)
            if self.resume is not None:
                refuse_other_data(root, self.resume, self.out)
        elif data_root is not None:
            root = Path(data_root)
        elif self.resume is not None:
            root = Path(self.resume["data_root"])
        else:
            from prostate_vq.data import default_data_root

            root = default_data_root()
        return root.resolve()

    def _intensity(self) -> dict:
        from prostate_vq.data import INTENSITY_SCALING

        return dict(getattr(self.train_ds, "intensity", None) or INTENSITY_SCALING)

    def _restore(self, model) -> None:
        resume = self.resume
        model.load_state_dict(resume["model_state"])
        self.optimizer.load_state_dict(resume["optimizer_state"])
        if self.scheduler is not None and resume.get("scheduler_state"):
            self.scheduler.load_state_dict(resume["scheduler_state"])
        self.stopper.load_state_dict(resume["early_stopping"])
        self.history = [dict(row) for row in resume.get("history", [])]
        self.step = int(self.history[-1].get("step") or 0) if self.history else 0
        self.start_epoch = int(resume["epoch"]) + 1
        if "refit" in resume:
            self.extra_payload["refit"] = resume["refit"]
        retune_schedule(self.optimizer, self.scheduler, self.training, self.start_epoch - 1)
        if self.dist.is_main:
            announce_resume(self.options, resume, self.training, self.root)
        restore_rng_state(resume["rng_state"])  # last: nothing above may draw from the restored generators

    # --- the epochs -----------------------------------------------------------------------------
    def train(self) -> Path | None:
        with warnings_above_bars(self.options.progress and self.dist.is_main):
            return self._train()

    def _train(self) -> Path | None:
        epochs = int(self.training["epochs"])
        deadline = None if self.options.max_minutes is None else self.started + 60.0 * float(self.options.max_minutes)
        bar = epoch_bar(self.options.progress and self.dist.is_main, self.start_epoch, epochs)
        stop_reason = "early_stopping" if self.stopper.stopped else ("epochs" if self.start_epoch > epochs else None)
        val_seconds = 0.0
        try:
            for epoch in range(self.start_epoch, epochs + 1):
                if stop_reason:
                    break
                # Leave room for this epoch's validation inside the budget.
                self.settings.deadline = None if deadline is None else deadline - val_seconds
                if self.settings.deadline is not None and time.monotonic() >= self.settings.deadline and self.history:
                    stop_reason = "max_minutes"
                    break
                row, metrics, out_of_time, val_seconds = self._epoch(epoch, epochs)
                improved = self.stopper.update(metrics[MONITOR_KEYS[self.training["monitor"]]], epoch, self.step)
                stop_reason = ("max_minutes" if out_of_time else "early_stopping" if self.stopper.stopped
                               else "epochs" if epoch == epochs else None)
                if self.dist.is_main:
                    warn_if_collapsed(metrics, epoch, self.core.num_codes, self._levels(metrics))
                    self._save(epoch, row, metrics, improved, stop_reason)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['train_loss']:.4g}", val_ssim=_fmt(row["val_ssim"]),
                                    usage=f"{row['codebook_usage_pct']:.0f}%", refresh=False)
                    bar.update(1)
                ddp.barrier(self.dist)
            if self.dist.enabled:
                record_rank_sync(self.writer, self.core, self.dist)
        except TrainingDiverged as error:
            good = self.history[-1]["epoch"] if self.history else None
            kept = (f"kept the last good checkpoint {self.out / 'last.pt'} (epoch {good}) and best.pt" if good
                    else "no checkpoint was written")
            raise TrainingDiverged(f"{error}; {kept}") from None
        finally:
            if bar is not None:
                bar.close()
            self.writer.close()
        self._log_end(stop_reason)
        return self.out if self.dist.is_main else None  # under torchrun only rank 0 reports the run

    def _epoch(self, epoch: int, epochs: int):
        t0 = time.monotonic()
        loader = make_loader(self.train_ds, self.batch_size, train=True, seed=self.seed, epoch=epoch,
                             num_workers=self.options.num_workers, dist_ctx=self.dist,
                             pin_memory=self.device.type == "cuda")
        bar = step_bar(self.options.progress and self.dist.is_main, len(loader), epoch, epochs)
        self.settings.steps_before = self.step
        try:
            result = train_one_epoch(self.model, loader, self.criterion, self.optimizer, self.settings, epoch, bar)
        finally:
            if bar is not None:
                bar.close()
        self.step += result.steps
        restarted = restarted_codes(self.model)
        t_val = time.monotonic()
        val_loader = make_loader(self.val_ds, self.batch_size, train=False, seed=self.seed, epoch=epoch,
                                 num_workers=self.options.num_workers, dist_ctx=self.dist,
                                 pin_memory=self.device.type == "cuda")
        metrics = validate(self.model, val_loader, self.criterion, self.settings)
        val_seconds = time.monotonic() - t_val
        if not math.isfinite(metrics["val_loss"]):
            raise TrainingDiverged(f"the validation loss became {metrics['val_loss']} in epoch {epoch}; "
                                   "training stopped. Lower --lr (it applies to --resume too) or check the data")
        lr = self.optimizer.param_groups[0]["lr"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metrics[MONITOR_KEYS[self.training["monitor"]]])
        elif self.scheduler is not None:
            self.scheduler.step()
        row = {"epoch": epoch, "train_loss": result.train_loss, "val_loss": metrics["val_loss"],
               "val_ssim": metrics["val_ssim"], "val_dice": metrics["val_dice"],
               "codebook_usage_pct": metrics["codebook_usage_pct"], "perplexity": metrics["perplexity"],
               "dead_codes_restarted": restarted, "lr": lr, "seconds": time.monotonic() - t0,
               "train_quantizer_loss": result.train_quantizer_loss,
               "val_quantizer_loss": metrics["val_quantizer_loss"], "step": self.step}
        self.history.append(row)
        return row, metrics, result.out_of_time, val_seconds

    def _levels(self, metrics: dict) -> list[dict]:
        """Usage and perplexity per code map (RQ depths, VQ-VAE-2 top and bottom) on the validation split."""
        spatial = [int(s) for s in self.training["spatial_size"]]
        return level_health(metrics["code_counts"], self.core.code_levels(spatial), spatial)

    def _save(self, epoch: int, row: dict, metrics: dict, improved: bool, stop_reason: str | None) -> None:
        """best.pt (when improved) before last.pt: a kill between the two only replays this epoch."""
        scalars = plain({k: v for k, v in row.items() if k != "epoch"})
        scalars["val_dice_per_class"] = metrics["val_dice_per_class"]
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.core.state_dict().items()}
        payload = {**self.base_payload, "model_state": state, "epoch": epoch, "metrics": scalars,
                   "code_counts": metrics["code_counts"]}
        if improved:
            self.writer.checkpoint("best.pt", payload)
        self.writer.checkpoint("last.pt", {
            **payload, "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng_state": capture_rng_state(), "early_stopping": self.stopper.state_dict(),
            "history": plain(self.history), "finished": stop_reason is not None, "stop_reason": stop_reason,
            "best_epoch": self.stopper.best_epoch})
        self.writer.history(self.history, row)

    def _log_end(self, stop_reason: str | None) -> None:
        if not self.dist.is_main:
            return
        last = self.history[-1]["epoch"] if self.history else "-"
        reason = {"early_stopping": f"early stopping after epoch {last}",
                  "max_minutes": f"time budget of {self.options.max_minutes} min reached after epoch {last}",
                  "epochs": "all epochs done"}.get(stop_reason or "", "done")
        best = self.stopper.best if self.stopper.best is not None else math.nan
        log.info("training ended: %s; best %s %.5g at epoch %d", reason, self.training["monitor"], best,
                 self.stopper.best_epoch)


class CodebookCollapseWarning(UserWarning):
    """The validation set uses under 10% of the codes: the codebook has (nearly) collapsed."""


def warn_if_collapsed(metrics: dict, epoch: int, num_codes: int, levels: list[dict] | None = None) -> bool:
    """One warning line when the validation set uses under 10% of the codes, of any one level when the model
    has several (pooled usage hides a collapsed level: a VQ-VAE-2 whose top uses 1 code reports 50%)."""
    candidates = [(lv["name"], lv["codebook_usage_pct"], lv["perplexity"], lv["codebook_size"])
                  for lv in levels] if levels and len(levels) > 1 else []
    candidates.append(("", metrics["codebook_usage_pct"], metrics["perplexity"], num_codes))
    for name, usage, perplexity, size in candidates:
        if math.isfinite(usage) and usage < COLLAPSE_USAGE_PCT:
            where = f"level {name} " if name else ""
            warnings.warn(f"codebook collapse: epoch {epoch} {where}uses {usage:.1f}% of {size} codes (perplexity "
                          f"{perplexity:.1f}); consider the ema or l2-codes presets, dead-code restart, or ReFiT",
                          CodebookCollapseWarning, stacklevel=2)
            return True
    return False


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
