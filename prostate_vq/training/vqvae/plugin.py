"""The VQ-VAE plug-in of the engine: config -> model, data -> loaders, one epoch of training and validation
(task loss, SSIM, Dice, codebook health), and what the run folder's config, summary and checkpoints hold.
ReFiT runs through the same `fit` with an `init` hook that installs its codebook."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prostate_vq.data import make_loader
from prostate_vq.errors import TrainingDiverged
from prostate_vq.files import plain
from prostate_vq.models.rate import level_health
from prostate_vq.models.summary import network_summary
from prostate_vq.runtime import distributed as ddp
from prostate_vq.runtime.device import configure_cpu_threads
from prostate_vq.runtime.run_format import HISTORY_COLUMNS
from prostate_vq.runtime.seeding import restore_rng_state, seed_everything
from prostate_vq.schema import RunConfig
from prostate_vq.training.config import MONITOR_KEYS, RunRequest
from prostate_vq.training.engine import (
    EarlyStopping,
    Engine,
    EpochResult,
    LoopState,
    RunWriter,
    budget_deadline,
    make_optimizer,
    restore_training_state,
    versions,
)
from prostate_vq.training.engine.progress import step_bar
from prostate_vq.training.engine.run_folder import record_rank_sync
from prostate_vq.training.vqvae.data import first_batch, load_datasets, loader_shard
from prostate_vq.training.vqvae.epoch import StepSettings, restarted_codes, train_one_epoch, validate
from prostate_vq.training.vqvae.losses import TaskLoss
from prostate_vq.training.vqvae.options import TrainOptions
from prostate_vq.training.vqvae.resume import announce_resume, kept_max_slices, refuse_other_data
from prostate_vq.training.vqvae.schedule import (
    PLAN_AFTER_STEPS,
    StepCosine,
    adopt_epoch_schedule,
    describe,
    estimate_time_horizon,
    log_plan,
    make_step_scheduler,
    replan_on_resume,
)
from prostate_vq.training.vqvae.validation import warn_if_collapsed

if TYPE_CHECKING:  # annotations only: prostate_vq.data (MONAI) is imported when a run loads its data
    from prostate_vq.data.dataset import SliceDataset

log = logging.getLogger("prostate_vq")


@dataclass
class InitContext:
    """What an `init(model, context)` hook of `fit` may use (ReFiT encodes and validates with it)."""

    device: torch.device
    dist: ddp.DistContext
    train_ds: SliceDataset
    val_ds: SliceDataset
    batch_size: int
    criterion: TaskLoss
    settings: StepSettings
    seed: int


class VQVAETraining:
    """One VQ-VAE run: its data, model, loss and files; the engine's plug-in."""

    history_columns: tuple[str, ...] = HISTORY_COLUMNS

    def __init__(
        self,
        options: TrainOptions,
        config: RunConfig,
        resume: dict | None,
        dist_ctx: ddp.DistContext,
        device: torch.device,
        started: float,
        extra_payload: dict,
        *,
        request: RunRequest | None = None,
    ):
        """`request` is what the command line gave: on --resume the "resuming" line names what it applies and
        ignores (the run itself follows `config`, resolved from it or from last.pt)."""
        self.options, self.config, self.resume = options, config, resume
        self.request = request or RunRequest()
        self.cfg = config.sections()  # what the checkpoints and config.yaml hold
        self.training = config.training
        self.task, self.seed = config.task, config.seed
        self.max_slices = kept_max_slices(options, resume) if resume else options.max_slices
        self.dist, self.device, self.started = dist_ctx, device, started
        self.extra_payload = extra_payload
        self.out = Path(options.out)

    def release(self) -> None:
        """Drop the model (and its DDP wrapper), optimizer and data, even if a traceback keeps `self` alive."""
        for name in ("model", "core", "engine", "train_ds", "val_ds"):
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
        self.train_ds, self.val_ds = load_datasets(self.root, self.task, training, self.max_slices)

        seed_everything(self.seed)
        model = build_model(self.cfg, self.task).to(device)
        if hasattr(model, "code_shape"):  # a spatial size the network cannot divide fails now, as exit 2
            model.code_shape(self._spatial_size())
        self.criterion = TaskLoss(self.task, training.l1_weight, training.dice_weight, training.seg_weight, training.ssim_weight)
        self.settings = StepSettings(
            device=device,
            channels_last=device.type == "cuda",
            mask_ratio=float(training.mask_ratio),
            mask_patch=int(getattr(model, "downsample", None) or self.config.model.downsample),
            grad_clip=training.grad_clip,
            dist=self.dist,
            warmup_steps=int(training.warmup_steps),
        )
        self.batch_size = int(training.batch_size)
        self.writer = RunWriter(self.out, self.dist.is_main, self.options.tensorboard)  # inputs checked by now
        if init is not None and self.resume is None:
            context = InitContext(
                device, self.dist, self.train_ds, self.val_ds, self.batch_size, self.criterion, self.settings, self.seed
            )
            self.extra_payload.update(init(model, context) or {})
        if self.settings.channels_last:
            _to_channels_last(model)
        optimizer = make_optimizer(model, training)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_ds) / self.dist.world_size) / self.batch_size)
        scheduler = make_step_scheduler(optimizer, training, self.steps_per_epoch)
        stopper = EarlyStopping(
            monitor=training.monitor,
            patience=int(training.patience),
            min_delta=float(training.min_delta),
            patience_steps=int(training.patience_steps),
            min_steps=int(training.min_steps),
        )
        state = LoopState()
        if self.resume is not None:
            state = self._restore(self.resume, model, optimizer, scheduler, stopper)
        elif self.dist.is_main:
            log_plan(scheduler, float(training.lr))
        if self.resume is None:
            # On a copy and on every rank: a forward pass may k-means-initialise a codebook (with collectives
            # under DDP), which must neither touch the real model nor leave rank 0 alone in a collective.
            example = model.prepare_input(first_batch(self.val_ds, device))
            self.writer.summary(network_summary(copy.deepcopy(model), example))
        self.core = model
        network: torch.nn.Module = model
        if self.options.compile:
            compiled = torch.compile(model)
            # Typed as the callable it was given; a Module compiles to an OptimizedModule, itself a Module.
            assert isinstance(compiled, torch.nn.Module)
            network = compiled
        self.model = ddp.wrap_model(network, self.dist, device, bool(training.find_unused_parameters))
        self.optimizer, self.scheduler = optimizer, scheduler
        self.settings.scheduler = scheduler if getattr(scheduler, "per_step", False) else None
        self.settings.max_steps = int(training.max_steps) if training.max_steps else None
        # (time, step) at the first epoch of this process: the measured step rate
        self._rate_from: tuple[float, int] | None = None
        base_payload = {
            "config": self.cfg,
            "preset": self.config.preset,
            "task": self.task,
            "spatial_size": [int(s) for s in training.spatial_size],
            "intensity": plain(self._intensity()),
            "seed": self.seed,
            "data_root": str(self.root),
            "max_slices": self.max_slices,
            "versions": versions(),
            **plain(self.extra_payload),
        }
        self.base_payload = base_payload
        self._write_config()
        self.engine = Engine(
            self,
            self.core,
            optimizer,
            scheduler,
            stopper,
            self.writer,
            base_payload,
            epochs=int(training.epochs),
            state=state,
            deadline=budget_deadline(self.started, self.options.max_minutes),
            progress=self.options.progress,
            dist=self.dist,
            budget_text=f"{self.options.max_minutes} min",
            max_steps=self.settings.max_steps,
        )

    def _write_config(self) -> None:
        """A valid --config file that reproduces the run (prostate-vq train --config RUN/config.yaml --out NEW),
        with the learning-rate plan it followed (`schedule`: informational, re-planned by the run that reads it)."""
        schedule = describe(self.scheduler)
        self.base_payload["schedule"] = schedule
        self.writer.config(
            self.cfg,
            {
                "base": self.base_payload["preset"],
                "task": self.task,
                "data_root": str(self.root),
                "seed": self.seed,
                **({"schedule": schedule} if schedule else {}),
            },
        )

    def _plan_from_time(self, steps_done: int) -> None:
        """A time budget shorter than the planned horizon: once the step rate is measured, the cosine is re-planned
        to end when the time does (all ranks agree on the smallest estimate)."""
        scheduler, deadline = self.scheduler, self.engine.deadline
        if not isinstance(scheduler, StepCosine) or deadline is None or scheduler.plan.source == "time":
            return
        now = time.monotonic()
        if self._rate_from is None or steps_done - self._rate_from[1] < PLAN_AFTER_STEPS:
            return
        estimate = estimate_time_horizon(steps_done, steps_done - self._rate_from[1], now - self._rate_from[0], deadline - now)
        if self.dist.enabled:
            value = torch.tensor([float(estimate)], device=self.device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
            estimate = int(value.item())
        if estimate < scheduler.plan.horizon:
            scheduler.replan(estimate, "time", steps_done)
            if self.dist.is_main:
                log_plan(scheduler, float(self.training.lr))
                self._write_config()

    def _data_root(self, data_root) -> Path:
        """Absolute, so that a checkpoint resumes and evaluates from any working directory."""
        if self.options.data is not None:
            root = Path(self.options.data)
            if self.resume is not None:
                refuse_other_data(root, self.resume, self.out)
        elif data_root is not None:
            root = Path(data_root)
        elif self.config.data_root is not None:
            root = Path(self.config.data_root)
            if self.dist.is_main:
                log.info("data: %s (the --config file's data_root; --data overrides it)", root)
        elif self.resume is not None:
            root = Path(self.resume["data_root"])
        else:
            from prostate_vq.data import default_data_root

            root = default_data_root()
        return root.resolve()

    def _intensity(self) -> dict:
        from prostate_vq.data import INTENSITY_SCALING

        return dict(getattr(self.train_ds, "intensity", None) or INTENSITY_SCALING)

    def _restore(self, resume: dict, model, optimizer, scheduler, stopper) -> LoopState:
        per_epoch = isinstance(scheduler, StepCosine) and "lr_lambdas" not in (resume.get("scheduler_state") or {})
        state = restore_training_state(
            {**resume, "scheduler_state": None} if per_epoch else resume, model, optimizer, scheduler, stopper
        )
        if per_epoch:  # last.pt of a version that planned the cosine per epoch
            adopt_epoch_schedule(optimizer, scheduler, state.step)
        if "refit" in resume:
            self.extra_payload["refit"] = resume["refit"]
        replanned = replan_on_resume(optimizer, scheduler, self.training, state.step, self.steps_per_epoch)
        if self.dist.is_main and replanned:
            log_plan(scheduler, float(self.training.lr))
        if self.dist.is_main:
            announce_resume(self.options, self.request, resume, self.training, self.root)
        restore_rng_state(resume["rng_state"])  # last: nothing above may draw from the restored generators
        return state

    # --- the engine's hooks ---------------------------------------------------------------------
    def train(self) -> Path | None:
        try:
            self.engine.run()
            if self.dist.enabled:
                record_rank_sync(self.writer, self.core, self.dist)
            self.writer.hparams(
                {
                    "preset": self.base_payload["preset"],
                    "task": self.task,
                    "seed": self.seed,
                    **{k: v for k, v in self.cfg.items() if k != "description" and v},
                },
                final_metrics(self.engine.state.history),
            )
        finally:
            self.writer.close()
        return self.out if self.dist.is_main else None  # under torchrun only rank 0 reports the run

    def _loader(self, dataset, epoch: int, shuffle: bool):
        """This epoch's loader of `dataset`: the run's batch size, seed, workers and torchrun shard (training and
        validation differ only in the data and the shuffle)."""
        return make_loader(
            dataset,
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            epoch=epoch,
            num_workers=self.options.num_workers,
            shard=loader_shard(self.dist),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def run_epoch(self, epoch: int, epochs: int, deadline: float | None, steps_before: int) -> EpochResult:
        loader = self._loader(self.train_ds, epoch, shuffle=True)
        bar = step_bar(self.options.progress and self.dist.is_main, len(loader), epoch, epochs)
        self.settings.deadline, self.settings.steps_before = deadline, steps_before
        if self._rate_from is None:
            self._rate_from = (time.monotonic(), steps_before)
        try:
            result = train_one_epoch(self.model, loader, self.criterion, self.optimizer, self.settings, epoch, bar)
        finally:
            if bar is not None:
                bar.close()
        restarted = restarted_codes(self.model)
        t_val = time.monotonic()
        val_loader = self._loader(self.val_ds, epoch, shuffle=False)
        metrics = validate(self.model, val_loader, self.criterion, self.settings)
        if not math.isfinite(metrics["val_loss"]):
            raise TrainingDiverged(
                f"the validation loss became {metrics['val_loss']} in epoch {epoch}; "
                "training stopped. Lower --lr (it applies to --resume too) or check the data"
            )
        self._plan_from_time(steps_before + result.steps)
        trained = result.row
        result.row = {
            "train_loss": trained["train_loss"],
            "val_loss": metrics["val_loss"],
            "val_ssim": metrics["val_ssim"],
            "val_dice": metrics["val_dice"],
            "codebook_usage_pct": metrics["codebook_usage_pct"],
            "perplexity": metrics["perplexity"],
            "dead_codes_restarted": restarted,
            "train_quantizer_loss": trained["train_quantizer_loss"],
            "val_quantizer_loss": metrics["val_quantizer_loss"],
        }
        result.monitor = metrics[MONITOR_KEYS[self.training.monitor]]
        result.val_seconds = time.monotonic() - t_val
        result.checkpoint = {"code_counts": metrics["code_counts"]}
        result.metrics = {"val_dice_per_class": metrics["val_dice_per_class"]}
        result.details = metrics
        return result

    def after_epoch(self, epoch: int, result: EpochResult) -> None:
        metrics = result.details
        warn_if_collapsed(metrics, epoch, self.core.num_codes, self._levels(metrics))
        if self.writer.tb is not None:
            self._visuals(epoch, metrics.get("code_counts"))

    @torch.no_grad()
    def _visuals(self, epoch: int, counts) -> None:
        """TensorBoard's reconstruction grid of the first validation slices (rank 0 only, the model in eval)."""
        batch = self.val_ds.batch(range(min(8, len(self.val_ds))))
        was_training = self.core.training
        self.core.eval()
        try:
            out = self.core(self.core.prepare_input(batch))
        finally:
            self.core.train(was_training)
        if out.recon is not None:
            images, shown = batch["image"].float(), out.recon
        else:  # mask task: reference and predicted label maps, scaled to [0, 1]
            images, shown = batch["label"].float() / 5, out.seg_logits.argmax(1, keepdim=True).float() / 5
        self.writer.visuals(epoch, images.cpu(), shown.cpu(), counts)

    def postfix(self, row: dict) -> dict:
        return {
            "loss": f"{row['train_loss']:.4g}",
            "val_ssim": _fmt(row["val_ssim"]),
            "usage": f"{row['codebook_usage_pct']:.0f}%",
        }

    def _levels(self, metrics: dict) -> list[dict]:
        """Usage and perplexity per code map (RQ depths, VQ-VAE-2 top and bottom) on the validation split."""
        spatial = self._spatial_size()
        return level_health(metrics["code_counts"], self.core.code_levels(spatial), spatial)

    def _spatial_size(self) -> tuple[int, int]:
        """(H, W) of the training slices (the config holds a checked two-item list)."""
        h, w = (int(s) for s in self.training.spatial_size)
        return h, w


def _to_channels_last(model: torch.nn.Module) -> None:
    """`model.to(memory_format=torch.channels_last)`, in place: torch documents the keyword, but its typed overloads
    of Module.to leave it out, so the call goes through the untyped signature the implementation has."""
    to: Callable[..., Any] = model.to
    to(memory_format=torch.channels_last)


def final_metrics(history: list[dict]) -> dict:
    """The hparams table's metrics: the best validation loss and SSIM over the run, the last epoch's usage."""

    def best(key, pick):
        values = [r[key] for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return pick(values) if values else None

    last = history[-1] if history else {}
    return {
        "best_val_loss": best("val_loss", min),
        "best_val_ssim": best("val_ssim", max),
        "final_codebook_usage_pct": last.get("codebook_usage_pct"),
        "final_perplexity": last.get("perplexity"),
        "steps": last.get("step"),
        "epochs": last.get("epoch"),
    }


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
