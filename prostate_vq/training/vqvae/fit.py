"""`fit`: one VQ-VAE run through the engine, from a resolved config or a run folder's last.pt (`--resume`), under
the run folder's lock and inside torchrun's process group. `TrainOptions` is how the run runs (data, folder, device,
budget in minutes); what it trains is a RunRequest (resolved here) or a RunConfig (training.config)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from prostate_vq.errors import UserInputError
from prostate_vq.files import folder_lock
from prostate_vq.runtime import distributed as ddp
from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.runtime.device import resolve_device
from prostate_vq.schema import RunConfig
from prostate_vq.training.config import RunRequest, check_training_config, resolve, resumed
from prostate_vq.training.vqvae.options import TrainOptions
from prostate_vq.training.vqvae.plugin import VQVAETraining
from prostate_vq.training.vqvae.resume import refuse_less_than_done


def fit(
    options: TrainOptions,
    config: RunConfig | RunRequest | None = None,
    *,
    init: Callable | None = None,
    extra_payload: dict | None = None,
    data_root: Path | None = None,
) -> Path | None:
    """Train a VQ-VAE with the engine: a fresh run follows `config` (a RunRequest is resolved here; None: the
    default preset), a resumed one (`options.resume`) its last.pt with the request's epochs, max_steps, patience and
    lr. `init(model, InitContext) -> dict` prepares a fresh model (ReFiT installs its codebook there) and returns
    payload entries; `extra_payload` is stored in every checkpoint of the run. The run folder is locked meanwhile
    (by rank 0 under torchrun): a second process is refused. Returns the run folder (None on torchrun ranks > 0)."""
    request = resume_request(options, config)
    with folder_lock(options.out, active=ddp.is_main_process(), create=not options.resume):
        return _fit(options, config, request, init=init, extra_payload=extra_payload, data_root=data_root)


def resume_request(options: TrainOptions, config: RunConfig | RunRequest | None) -> RunRequest:
    """The request a run is resumed under (None: nothing given). A resolved RunConfig cannot say which of its
    values were given, so it cannot say what a resumed run, which follows its checkpoint, should apply or ignore."""
    if isinstance(config, RunConfig) and options.resume:
        raise ValueError(
            "resume=True continues the run's last.pt with its own config: pass a RunRequest (its "
            "epochs, max_steps, patience and lr apply), not a resolved RunConfig"
        )
    return config if isinstance(config, RunRequest) else RunRequest()


def _fit(
    options: TrainOptions,
    config: RunConfig | RunRequest | None,
    request: RunRequest,
    *,
    init: Callable | None,
    extra_payload: dict | None,
    data_root: Path | None,
) -> Path | None:
    started = time.monotonic()
    out = Path(options.out)
    resume = None
    if options.resume:
        if not (out / "last.pt").is_file():
            raise UserInputError("--resume: no last.pt in the run folder", out)
        resume = load_checkpoint(out / "last.pt", kind="resume")
        refuse_less_than_done(request, resume, out)
        config = resumed(request, resume, out / "last.pt")
    elif (out / "last.pt").exists():
        raise UserInputError(
            "the run folder already holds a run (last.pt): pass --resume to continue it or choose another --out", out
        )
    elif not isinstance(config, RunConfig):
        config = resolve(config)
    else:  # a caller's config (ReFiT's, a Python user's) by the same checks
        check_training_config(asdict(config.training), config.task)
    with ddp.process_group(resolve_device(options.device)) as (dist_ctx, device):
        run = None
        try:
            run = VQVAETraining(options, config, resume, dist_ctx, device, started, extra_payload or {}, request=request)
            run.setup(init, data_root)
            return run.train()
        finally:
            if dist_ctx.enabled:
                # The DDP reducer must be gone before its process group: destroying it afterwards can hang.
                if run is not None:
                    run.release()
                del run
                gc.collect()
