"""`prostate-vq train-prior`: encode the splits with the frozen VQ-VAE, then fit an autoregressive prior
over the code maps with the conventions of `train` (early stopping on validation NLL, atomic best/last
checkpoints, exact resume, a wall-clock budget, tqdm, history.csv) and report NLL in bits per code.

A prior checkpoint is self-contained: it stores the prior (``model_state``/``config``, ``kind="prior"``),
the code layout, and a copy of the VQ-VAE payload (weights, config, task, spatial size), so `sample`
needs nothing else.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from prostate_vq.errors import TrainingDiverged, UserInputError
from prostate_vq.files import folder_lock, plain, write_json_atomic
from prostate_vq.prior.codes import CodeLayout, encode_dataset_tensors, load_vqvae, resolve_data_root
from prostate_vq.prior.networks import build_prior
from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.runtime.device import autocast, configure_cpu_threads, resolve_device
from prostate_vq.runtime.seeding import restore_rng_state, seed_everything
from prostate_vq.schema import PRIOR_ARCH_DEFAULTS, PRIOR_COMMON_TRAINING, PRIOR_TRAINING_DEFAULTS, TrainingConfig
from prostate_vq.training.config import check_training_values
from prostate_vq.training.engine import Engine, EpochResult, LoopState, budget_deadline, restore_training_state
from prostate_vq.training.engine.early_stopping import EarlyStopping
from prostate_vq.training.engine.optim import make_optimizer, make_scheduler, retune_schedule
from prostate_vq.training.engine.run_folder import RunWriter, versions

log = logging.getLogger("prostate_vq.prior")

HISTORY_COLUMNS = ("epoch", "train_nll_bits", "val_nll_bits", "lr", "seconds")


def _vqvae_copy(payload: dict) -> dict:
    """What `sample` needs to rebuild and run the VQ-VAE (no optimizer or history)."""
    keys = (
        "format_version",
        "model_state",
        "config",
        "preset",
        "task",
        "spatial_size",
        "intensity",
        "data_root",
        "seed",
        "epoch",
        "metrics",
    )
    return {k: payload[k] for k in keys if k in payload}


@torch.no_grad()
def mean_nll_bits(prior, codes: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Average bits per code over a whole split (every map has the same number of codes)."""
    if len(codes) == 0:
        return math.nan
    was_training = prior.training
    prior.eval()
    total = 0.0
    for start in range(0, len(codes), batch_size):
        batch = codes[start : start + batch_size].to(device)
        with autocast(device):
            total += float(prior.nll(batch, reduction="none").sum())
    prior.train(was_training)
    return total / len(codes)


def unigram_bits(train_codes: torch.Tensor, codes: torch.Tensor, vocab_sizes: list[int]) -> float:
    """Bits per code of ``codes`` under the training split's code frequencies (add-one smoothing): the
    baseline a prior must beat to have learned anything spatial."""
    if len(codes) == 0:
        return math.nan
    bits = 0.0
    for level, k in enumerate(vocab_sizes):
        counts = torch.bincount(train_codes[..., level].reshape(-1), minlength=k).double() + 1.0
        logp = torch.log2(counts / counts.sum())
        bits += float(-logp[codes[..., level].reshape(-1)].mean())
    return bits / len(vocab_sizes)


def train_epoch(
    prior, codes: torch.Tensor, optimizer, training: dict, device: torch.device, shuffle_seed: int, deadline: float | None
) -> tuple[float, bool, int]:
    """One pass over ``codes`` in a seeded order; ``(mean train bits per code, ran out of time, steps)``.
    The loss stays on the device (one host sync per epoch, not per step)."""
    prior.train()
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(shuffle_seed)).to(device)
    batch = int(training["batch_size"])
    total = torch.zeros((), device=device)
    seen, steps, out_of_time = 0, 0, False
    for start in range(0, len(order), batch):
        x = codes[order[start : start + batch]]
        with autocast(device):
            loss = prior.nll(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if training.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(prior.parameters(), float(training["grad_clip"]))
        optimizer.step()
        total += loss.detach() * len(x)
        seen += len(x)
        steps += 1
        if deadline is not None and time.monotonic() >= deadline:
            out_of_time = True
            break
    return float(total) / max(1, seen), out_of_time, steps


def _encode_splits(model, root: Path, payload: dict, layout: CodeLayout, device, max_slices):
    from prostate_vq.data import make_dataset
    from prostate_vq.errors import DataError

    spatial = tuple(int(s) for s in payload["spatial_size"])
    splits = {}
    for split in ("train", "validate", "test"):
        try:
            dataset = make_dataset(root, split, payload["task"], spatial_size=spatial, max_slices=max_slices)
        except DataError:
            if split == "train":
                raise
            dataset = None
        if dataset is None or len(dataset) == 0:
            if split != "test":
                raise UserInputError(f"no {split} slices found (keras_slices_{split})", root)
            splits[split] = torch.zeros((0, *layout.grid, layout.depth), dtype=torch.long)
            continue
        splits[split] = layout.to_prior(encode_dataset_tensors(model, dataset, 64, device))
    return splits


def train_prior(
    checkpoint,
    data=None,
    out=None,
    arch: str = "pixelcnn",
    epochs: int | None = None,
    max_minutes: float | None = None,
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    batch_size: int | None = None,
    lr: float | None = None,
    patience: int | None = None,
    max_slices: int | None = None,
    progress: bool = True,
    arch_options: dict | None = None,
    tensorboard: bool = False,
) -> Path:
    """Train a prior over the codes of the VQ-VAE ``checkpoint``; returns the run folder (best.pt, last.pt,
    history.csv, metrics.json). ``arch_options`` overrides network sizes (e.g. ``{"dim": 32}``); ``tensorboard``
    also logs the history and, at the end, the hparams with the final NLLs to ``out/tb``. The folder is locked
    meanwhile: a second process is refused."""
    if out is None:
        raise UserInputError("train-prior needs --out")
    with folder_lock(out, create=not resume):
        return _train_prior(
            checkpoint,
            data,
            Path(out),
            arch,
            epochs,
            max_minutes,
            device,
            seed,
            resume,
            batch_size,
            lr,
            patience,
            max_slices,
            progress,
            arch_options,
            tensorboard,
        )


def _train_prior(
    checkpoint,
    data,
    out: Path,
    arch,
    epochs,
    max_minutes,
    device,
    seed,
    resume,
    batch_size,
    lr,
    patience,
    max_slices,
    progress,
    arch_options,
    tensorboard=False,
) -> Path:
    started = time.monotonic()
    last_path = out / "last.pt"
    device = resolve_device(device)
    if device.type == "cpu":
        configure_cpu_threads(0)

    resume_payload = None
    if resume:
        if not last_path.is_file():
            raise UserInputError("--resume: no last.pt in the prior run folder", out)
        resume_payload = load_checkpoint(last_path, kind="prior_resume")  # refuses a VQ-VAE run's last.pt
        vq_payload = resume_payload["vqvae"]
        from prostate_vq.prior.codes import model_from_payload

        model = model_from_payload(vq_payload, device)
        prior_cfg = dict(resume_payload["config"])
        training = dict(resume_payload["training"])
        for key, value in (("epochs", epochs), ("patience", patience), ("lr", lr)):
            if value is not None:
                training[key] = value
        seed = int(resume_payload["seed"])
        max_slices = max_slices if max_slices is not None else resume_payload.get("max_slices")
        checkpoint_path = resume_payload["vqvae_checkpoint"]
    else:
        if last_path.exists():
            raise UserInputError("the folder already holds a prior run (last.pt): pass --resume or choose another --out", out)
        if arch not in PRIOR_ARCH_DEFAULTS:
            raise UserInputError(f"unknown prior architecture {arch!r}; choose pixelcnn or transformer")
        model, vq_payload = load_vqvae(checkpoint, device)
        checkpoint_path = str(Path(checkpoint).resolve())
        training = {**PRIOR_COMMON_TRAINING, **PRIOR_TRAINING_DEFAULTS[arch]}
        training.update(
            {
                k: v
                for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("patience", patience))
                if v is not None
            }
        )
        prior_cfg = None
    training = check_training_values(training)

    spatial = tuple(int(s) for s in vq_payload["spatial_size"])
    layout = CodeLayout.for_model(model, spatial)
    root = resolve_data_root(data, resume_payload if resume_payload is not None else vq_payload)
    # Code maps are small (16 KiB per 64x32 map as int64, 190 MB for the HipMRI train split): keep them
    # on the device so a training step never waits for a host copy.
    codes = {split: c.to(device) for split, c in _encode_splits(model, root, vq_payload, layout, device, max_slices).items()}
    del model

    seed_everything(seed)
    if prior_cfg is None:
        prior_cfg = {"arch": arch, "vocab_sizes": layout.vocab_sizes, **PRIOR_ARCH_DEFAULTS[arch], **(arch_options or {})}
        if arch == "transformer":
            prior_cfg["code_shape"] = list(layout.grid)
    prior = build_prior(prior_cfg).to(device)
    recipe = TrainingConfig(**training)  # the engine's optimizer and schedule read the typed section
    optimizer = make_optimizer(prior, recipe)
    scheduler = make_scheduler(optimizer, recipe)
    stopper = EarlyStopping(monitor="loss", patience=int(training["patience"]), min_delta=float(training["min_delta"]))
    state = LoopState()
    if resume_payload is None:
        prior.init_output_bias(codes["train"])
    else:
        state = restore_training_state(resume_payload, prior, optimizer, scheduler, stopper)
        retune_schedule(optimizer, scheduler, recipe, state.start_epoch - 1)  # --lr and --epochs re-plan the cosine
        restore_rng_state(resume_payload["rng_state"])

    base_payload = {
        "kind": "prior",
        "arch": prior_cfg["arch"],
        "config": prior_cfg,
        "training": training,
        "layout": layout.to_dict(),
        "vqvae_checkpoint": checkpoint_path,
        "vqvae": _vqvae_copy(vq_payload),
        "task": vq_payload["task"],
        "spatial_size": list(spatial),
        "data_root": str(root),
        "seed": seed,
        "max_slices": max_slices,
        "versions": versions(),
    }
    plugin = PriorTraining(prior, codes, optimizer, training, device, seed)
    writer = RunWriter(out, active=True, tensorboard=tensorboard)  # also clears our own writes cut short by a kill -9
    engine = Engine(
        plugin,
        prior,
        optimizer,
        scheduler,
        stopper,
        writer,
        plain(base_payload),
        epochs=int(training["epochs"]),
        state=state,
        deadline=budget_deadline(started, max_minutes),
        progress=progress,
        budget_text=f"{max_minutes} min",
    )
    try:
        stop_reason = engine.run()
        return _finish_prior(
            out,
            prior,
            codes,
            layout,
            training,
            prior_cfg,
            state,
            stop_reason,
            checkpoint_path,
            root,
            seed,
            device,
            writer,
            spatial,
        )
    finally:
        writer.close()


def _finish_prior(
    out, prior, codes, layout, training, prior_cfg, state, stop_reason, checkpoint_path, root, seed, device, writer, spatial
) -> Path:
    """metrics.json of the best checkpoint (and the TensorBoard hparams with its NLLs)."""
    history = state.history
    batch = int(training["batch_size"])
    train_codes = codes["train"]

    if not (out / "best.pt").is_file():
        raise TrainingDiverged("no epoch produced a finite validation NLL; no best.pt was written")
    best = load_checkpoint(out / "best.pt", map_location="cpu", kind="prior")
    prior.load_state_dict(best["model_state"])
    metrics = {
        "kind": "prior",
        "arch": prior_cfg["arch"],
        "layout": layout.describe(),
        "vocab_sizes": layout.vocab_sizes,
        "codes_per_slice": layout.codes_per_map,
        "val_nll_bits_per_code": mean_nll_bits(prior, codes["validate"], batch, device),
        "test_nll_bits_per_code": mean_nll_bits(prior, codes["test"], batch, device),
        "uniform_bits_per_code": layout.uniform_bits_per_code,
        "unigram_val_bits_per_code": unigram_bits(train_codes, codes["validate"], layout.vocab_sizes),
        "n_train": len(codes["train"]),
        "n_val": len(codes["validate"]),
        "n_test": len(codes["test"]),
        "best_epoch": int(best["epoch"]),
        "epochs_run": len(history),
        "stop_reason": stop_reason,
        "checkpoint": checkpoint_path,
        "data_root": str(root),
        "seed": seed,
        "parameters": sum(p.numel() for p in prior.parameters()),
    }
    metrics["test_bits_per_slice"] = metrics["test_nll_bits_per_code"] * metrics["codes_per_slice"]
    # The rate the codes would take entropy-coded under this prior (`encode --compress` makes it real).
    pixels = int(spatial[0]) * int(spatial[1])
    metrics["test_nll_bits_per_pixel"] = metrics["test_bits_per_slice"] / pixels
    metrics["nominal_bits_per_pixel"] = metrics["uniform_bits_per_code"] * metrics["codes_per_slice"] / pixels
    write_json_atomic(out / "metrics.json", metrics)
    writer.hparams(
        {"arch": prior_cfg["arch"], "seed": seed, "prior": prior_cfg, "training": training},
        {k: metrics[k] for k in ("val_nll_bits_per_code", "test_nll_bits_per_code", "best_epoch", "epochs_run")},
    )
    log.info(
        "prior: val %.4f, test %.4f bits/code (uniform %.2f); test %.4f bits per pixel under the prior (nominal %.4f)",
        metrics["val_nll_bits_per_code"],
        metrics["test_nll_bits_per_code"],
        metrics["uniform_bits_per_code"],
        metrics["test_nll_bits_per_pixel"],
        metrics["nominal_bits_per_pixel"],
    )
    return out


class PriorTraining:
    """The engine's plug-in for the prior: an epoch over the training code maps, NLL on the validation maps."""

    history_columns: tuple[str, ...] = HISTORY_COLUMNS

    def __init__(self, prior, codes: dict, optimizer, training: dict, device: torch.device, seed: int):
        self.prior, self.codes, self.optimizer, self.training = prior, codes, optimizer, training
        self.device, self.seed = device, seed

    def run_epoch(self, epoch: int, epochs: int, deadline: float | None, steps_before: int) -> EpochResult:
        train_bits, out_of_time, steps = train_epoch(
            self.prior, self.codes["train"], self.optimizer, self.training, self.device, self.seed * 100_003 + epoch, deadline
        )
        if not math.isfinite(train_bits):
            raise TrainingDiverged(f"the prior's loss became {train_bits} in epoch {epoch}. Lower --lr")
        t_val = time.monotonic()
        val_bits = mean_nll_bits(self.prior, self.codes["validate"], int(self.training["batch_size"]), self.device)
        return EpochResult(
            {"train_nll_bits": train_bits, "val_nll_bits": val_bits},
            val_bits,
            steps,
            out_of_time,
            val_seconds=time.monotonic() - t_val,
        )

    def after_epoch(self, epoch: int, result: EpochResult) -> None:
        pass

    def postfix(self, row: dict) -> dict:
        return {"train_bits": f"{row['train_nll_bits']:.3f}", "val_bits": f"{row['val_nll_bits']:.3f}"}
