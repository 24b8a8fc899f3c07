"""`fit`: one VQ-VAE run through the engine, from a resolved config or a run folder's last.pt (`--resume`), under
the run folder's lock and inside torchrun's process group. `TrainOptions` is what `prostate-vq train` passes."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.files import folder_lock
from prostate_vq.runtime import distributed as ddp
from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.runtime.device import resolve_device
from prostate_vq.schema import RunConfig
from prostate_vq.training.config import check_training_config, resolve, resumed
from prostate_vq.training.vqvae.plugin import VQVAETraining
from prostate_vq.training.vqvae.resume import refuse_less_than_done


@dataclass
class TrainOptions:
    """Exactly what `prostate-vq train` passes (see cli._train_options); None = not given. The config's sources
    (preset or config, task, seed, overrides and the explicit training options) are read once, by
    training.config.resolve; the rest are this process's runtime settings."""

    out: Path
    data: Path | None = None  # None: the --config file's data_root, on --resume the run's, else the demo phantom
    preset: str | None = None  # None: "default", or the --config file's base
    task: str | None = None  # None: the --config file's, else "image" (on --resume the run's own)
    epochs: int | None = None
    max_minutes: float | None = None
    max_steps: int | None = None  # optimizer-step budget (training.max_steps); the cosine is planned over it
    spatial_size: tuple[int, int] | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None  # None: the --config file's, else 0 (on --resume the run's own)
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



def fit(options: TrainOptions, config: RunConfig | None = None, *, init: Callable | None = None,
        extra_payload: dict | None = None, data_root: Path | None = None) -> Path | None:
    """Train a VQ-VAE with the engine. `init(model, InitContext) -> dict` prepares a fresh model (ReFiT installs
    its codebook there) and returns payload entries; `extra_payload` is stored in every checkpoint of the run.
    The run folder is locked meanwhile (by rank 0 under torchrun): a second process is refused."""
    with folder_lock(options.out, active=ddp.is_main_process(), create=not options.resume):
        return _fit(options, config, init=init, extra_payload=extra_payload, data_root=data_root)


def _fit(options: TrainOptions, config: RunConfig | None, *, init: Callable | None, extra_payload: dict | None,
         data_root: Path | None) -> Path | None:
    started = time.monotonic()
    out = Path(options.out)
    resume = None
    if options.resume:
        if not (out / "last.pt").is_file():
            raise UserInputError("--resume: no last.pt in the run folder", out)
        resume = load_checkpoint(out / "last.pt", kind="resume")
        refuse_less_than_done(options, resume, out)
        config = resumed(options, resume, out / "last.pt")
    elif (out / "last.pt").exists():
        raise UserInputError("the run folder already holds a run (last.pt): pass --resume to continue it "
                             "or choose another --out", out)
    elif config is None:
        config = resolve(options)
    else:  # a caller's config (ReFiT's) by the same checks
        check_training_config(asdict(config.training), config.task)
    with ddp.process_group(resolve_device(options.device)) as (dist_ctx, device):
        run = None
        try:
            run = VQVAETraining(options, config, resume, dist_ctx, device, started, extra_payload or {})
            run.setup(init, data_root)
            return run.train()
        finally:
            if dist_ctx.enabled:
                # The DDP reducer must be gone before its process group: destroying it afterwards can hang.
                if run is not None:
                    run.release()
                del run
                gc.collect()
