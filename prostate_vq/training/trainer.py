"""The VQ-VAE plug-in of the engine: preset -> model, data -> loaders, one epoch of training and validation
(task loss, SSIM, Dice, codebook health), and the run folder's config, summary and checkpoints. ReFiT runs
through the same `fit` with an `init` hook that installs its codebook."""

from __future__ import annotations

import copy
import gc
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prostate_vq.errors import TrainingDiverged, UserInputError
from prostate_vq.files import folder_lock, plain
from prostate_vq.models.rate import level_health
from prostate_vq.models.summary import network_summary
from prostate_vq.training import distributed as ddp
from prostate_vq.training.checkpoints import load_checkpoint
from prostate_vq.training.config import (
    MONITOR_KEYS,
    check_training_config,
    downsample_factor,
    make_optimizer,
    resolve_config,
)
from prostate_vq.training.data_loading import first_batch, load_datasets, make_loader
from prostate_vq.training.early_stopping import EarlyStopping
from prostate_vq.training.engine import Engine, EpochResult, LoopState, budget_deadline, restore_training_state
from prostate_vq.training.history import HISTORY_COLUMNS
from prostate_vq.training.loop import StepSettings, restarted_codes, train_one_epoch, validate
from prostate_vq.training.losses import TaskLoss
from prostate_vq.training.resume import announce_resume, kept_max_slices, refuse_less_than_done, refuse_other_data
from prostate_vq.training.run_files import RunWriter, record_rank_sync, step_bar, versions
from prostate_vq.training.runtime import configure_cpu_threads, resolve_device
from prostate_vq.training.schedule import (
    PLAN_AFTER_STEPS,
    StepCosine,
    adopt_epoch_schedule,
    describe,
    estimate_time_horizon,
    log_plan,
    make_step_scheduler,
    replan_on_resume,
)
from prostate_vq.training.seeding import restore_rng_state, seed_everything

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
    max_steps: int | None = None  # optimizer-step budget (training.max_steps); the cosine is planned over it
    spatial_size: tuple[int, int] | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None  # None: 0, or on --resume the run's own
    patience: int | None = None
    monitor: str | None = None
    mask_ratio: float | None = None
    device: str = "auto"
    resume: bool = False
    overrides: list[str] = field(default_factory=list)
    max_slices: int | None = None
    num_workers: int = 0
    compile: bool = False
    tensorboard: bool = False
    progress: bool = True
    config: Path | None = None  # a config file (`base: PRESET` + sections), under --set and the options above


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


def fit(options: TrainOptions, cfg: dict | None = None, *, init: Callable | None = None,
        extra_payload: dict | None = None, data_root: Path | None = None) -> Path | None:
    """Train a VQ-VAE with the engine. `init(model, InitContext) -> dict` prepares a fresh model (ReFiT installs
    its codebook there) and returns payload entries; `extra_payload` is stored in every checkpoint of the run.
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
        refuse_less_than_done(options, resume, out)
        cfg = copy.deepcopy(resume["config"])
        for key in ("epochs", "max_steps", "patience", "lr"):  # a resumed run may be extended, more patient, slower
            if getattr(options, key) is not None:
                cfg["training"][key] = getattr(options, key)
    elif (out / "last.pt").exists():
        raise UserInputError("the run folder already holds a run (last.pt): pass --resume to continue it "
                             "or choose another --out", out)
    else:
        cfg = cfg if cfg is not None else resolve_config(options)

    if resume is not None:  # a broken stored config is one line naming the checkpoint, not a traceback later
        from prostate_vq.models.presets import check_model_config

        try:
            check_model_config(cfg)
            check_training_config(cfg["training"], resume["task"])
        except UserInputError as error:
            raise UserInputError(f"--resume: its stored config is broken ({error})", out / "last.pt") from None
    check_training_config(cfg["training"], resume["task"] if resume else options.task)
    with ddp.process_group(resolve_device(options.device)) as (dist_ctx, device):
        run = None
        try:
            run = VQVAETraining(options, cfg, resume, dist_ctx, device, started, extra_payload or {})
            run.setup(init, data_root)
            return run.train()
        finally:
            if dist_ctx.enabled:
                # The DDP reducer must be gone before its process group: destroying it afterwards can hang.
                if run is not None:
                    run.release()
                del run
                gc.collect()


class VQVAETraining:
    """One VQ-VAE run: its data, model, loss and files; the engine's plug-in."""

    history_columns = HISTORY_COLUMNS

    def __init__(self, options, cfg, resume, dist_ctx, device, started, extra_payload):
        self.options, self.cfg, self.resume = options, cfg, resume
        self.training = cfg["training"]
        self.task = resume["task"] if resume else options.task
        self.seed = int(resume.get("seed", options.seed or 0)) if resume else int(options.seed or 0)
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
        optimizer = make_optimizer(model, training)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_ds) / self.dist.world_size) / self.batch_size)
        scheduler = make_step_scheduler(optimizer, training, self.steps_per_epoch)
        stopper = EarlyStopping(monitor=training["monitor"], patience=int(training["patience"]),
                                min_delta=float(training["min_delta"]), patience_steps=int(training["patience_steps"]),
                                min_steps=int(training["min_steps"]))
        state = LoopState()
        if self.resume is not None:
            state = self._restore(model, optimizer, scheduler, stopper)
        elif self.dist.is_main:
            log_plan(scheduler, float(training["lr"]))
        if self.resume is None:
            # On a copy and on every rank: a forward pass may k-means-initialise a codebook (with collectives
            # under DDP), which must neither touch the real model nor leave rank 0 alone in a collective.
            example = model.prepare_input(first_batch(self.val_ds, device))
            self.writer.summary(network_summary(copy.deepcopy(model), example))
        self.core = model
        if self.options.compile:
            model = torch.compile(model)
        self.model = ddp.wrap_model(model, self.dist, device, bool(training.get("find_unused_parameters", False)))
        self.optimizer, self.scheduler = optimizer, scheduler
        self.settings.scheduler = scheduler if getattr(scheduler, "per_step", False) else None
        self.settings.max_steps = int(training["max_steps"]) if training.get("max_steps") else None
        self._rate_from = None  # (time, step) at the first epoch of this process: the measured step rate
        base_payload = {
            "config": self.cfg,
            "preset": self.resume["preset"] if self.resume else self.options.preset,
            "task": self.task, "spatial_size": [int(s) for s in training["spatial_size"]],
            "intensity": plain(self._intensity()), "seed": self.seed, "data_root": str(self.root),
            "max_slices": self.max_slices, "versions": versions(), **plain(self.extra_payload),
        }
        self.base_payload = base_payload
        self._write_config()
        self.engine = Engine(self, self.core, optimizer, scheduler, stopper, self.writer, base_payload,
                             epochs=int(training["epochs"]), state=state,
                             deadline=budget_deadline(self.started, self.options.max_minutes),
                             progress=self.options.progress, dist=self.dist,
                             budget_text=f"{self.options.max_minutes} min", max_steps=self.settings.max_steps)

    def _write_config(self) -> None:
        """A valid --config file that reproduces the run (prostate-vq train --config RUN/config.yaml --out NEW),
        with the learning-rate plan it followed (`schedule`: informational, re-planned by the run that reads it)."""
        schedule = describe(self.scheduler)
        self.base_payload["schedule"] = schedule
        self.writer.config(self.cfg, {"base": self.base_payload["preset"], "task": self.task,
                                      "data_root": str(self.root), "seed": self.seed,
                                      **({"schedule": schedule} if schedule else {})})

    def _plan_from_time(self, steps_done: int) -> None:
        """A time budget shorter than the planned horizon: once the step rate is measured, the cosine is re-planned
        to end when the time does (all ranks agree on the smallest estimate)."""
        scheduler, deadline = self.scheduler, self.engine.deadline
        if not isinstance(scheduler, StepCosine) or deadline is None or scheduler.plan.source == "time":
            return
        now = time.monotonic()
        if self._rate_from is None or steps_done - self._rate_from[1] < PLAN_AFTER_STEPS:
            return
        estimate = estimate_time_horizon(steps_done, steps_done - self._rate_from[1], now - self._rate_from[0],
                                         deadline - now)
        if self.dist.enabled:
            value = torch.tensor([float(estimate)], device=self.device)
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
            estimate = int(value.item())
        if estimate < scheduler.plan.horizon:
            scheduler.replan(estimate, "time", steps_done)
            if self.dist.is_main:
                log_plan(scheduler, float(self.training["lr"]))
                self._write_config()

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

    def _restore(self, model, optimizer, scheduler, stopper) -> LoopState:
        resume = self.resume
        per_epoch = isinstance(scheduler, StepCosine) and "lr_lambdas" not in (resume.get("scheduler_state") or {})
        state = restore_training_state({**resume, "scheduler_state": None} if per_epoch else resume, model,
                                       optimizer, scheduler, stopper)
        if per_epoch:  # last.pt of a version that planned the cosine per epoch
            adopt_epoch_schedule(optimizer, scheduler, state.step)
        if "refit" in resume:
            self.extra_payload["refit"] = resume["refit"]
        replanned = replan_on_resume(optimizer, scheduler, self.training, state.step, self.steps_per_epoch)
        if self.dist.is_main and replanned:
            log_plan(scheduler, float(self.training["lr"]))
        if self.dist.is_main:
            announce_resume(self.options, resume, self.training, self.root)
        restore_rng_state(resume["rng_state"])  # last: nothing above may draw from the restored generators
        return state

    # --- the engine's hooks ---------------------------------------------------------------------
    def train(self) -> Path | None:
        try:
            self.engine.run()
            if self.dist.enabled:
                record_rank_sync(self.writer, self.core, self.dist)
            self.writer.hparams({"preset": self.base_payload["preset"], "task": self.task, "seed": self.seed,
                                 **{k: self.cfg[k] for k in ("model", "quantizer", "training", "refit") if self.cfg.get(k)}},
                                final_metrics(self.engine.state.history))
        finally:
            self.writer.close()
        return self.out if self.dist.is_main else None  # under torchrun only rank 0 reports the run

    def run_epoch(self, epoch: int, epochs: int, deadline: float | None, steps_before: int) -> EpochResult:
        loader = make_loader(self.train_ds, self.batch_size, train=True, seed=self.seed, epoch=epoch,
                             num_workers=self.options.num_workers, dist_ctx=self.dist,
                             pin_memory=self.device.type == "cuda")
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
        val_loader = make_loader(self.val_ds, self.batch_size, train=False, seed=self.seed, epoch=epoch,
                                 num_workers=self.options.num_workers, dist_ctx=self.dist,
                                 pin_memory=self.device.type == "cuda")
        metrics = validate(self.model, val_loader, self.criterion, self.settings)
        if not math.isfinite(metrics["val_loss"]):
            raise TrainingDiverged(f"the validation loss became {metrics['val_loss']} in epoch {epoch}; "
                                   "training stopped. Lower --lr (it applies to --resume too) or check the data")
        self._plan_from_time(steps_before + result.steps)
        row = {"train_loss": result.train_loss, "val_loss": metrics["val_loss"], "val_ssim": metrics["val_ssim"],
               "val_dice": metrics["val_dice"], "codebook_usage_pct": metrics["codebook_usage_pct"],
               "perplexity": metrics["perplexity"], "dead_codes_restarted": restarted,
               "train_quantizer_loss": result.train_quantizer_loss,
               "val_quantizer_loss": metrics["val_quantizer_loss"]}
        return EpochResult(row, metrics[MONITOR_KEYS[self.training["monitor"]]], result.steps, result.out_of_time,
                           result.out_of_steps, time.monotonic() - t_val, checkpoint={"code_counts": metrics["code_counts"]},
                           metrics={"val_dice_per_class": metrics["val_dice_per_class"]}, details=metrics)

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
        return {"loss": f"{row['train_loss']:.4g}", "val_ssim": _fmt(row["val_ssim"]),
                "usage": f"{row['codebook_usage_pct']:.0f}%"}

    def _levels(self, metrics: dict) -> list[dict]:
        """Usage and perplexity per code map (RQ depths, VQ-VAE-2 top and bottom) on the validation split."""
        spatial = [int(s) for s in self.training["spatial_size"]]
        return level_health(metrics["code_counts"], self.core.code_levels(spatial), spatial)


def final_metrics(history: list[dict]) -> dict:
    """The hparams table's metrics: the best validation loss and SSIM over the run, the last epoch's usage."""
    def best(key, pick):
        values = [r[key] for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return pick(values) if values else None

    last = history[-1] if history else {}
    return {"best_val_loss": best("val_loss", min), "best_val_ssim": best("val_ssim", max),
            "final_codebook_usage_pct": last.get("codebook_usage_pct"), "final_perplexity": last.get("perplexity"),
            "steps": last.get("step"), "epochs": last.get("epoch")}


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
