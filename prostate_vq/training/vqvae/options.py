"""`TrainOptions`: a VQ-VAE run's runtime settings, apart from its configuration (training.config.RunRequest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainOptions:
    """How this process runs a VQ-VAE run, never what it trains: the run's configuration comes from a
    training.config.RunRequest (preset or --config, task, seed, --set, epochs, max_steps and the other training
    options; read once, by training.config.resolve) or an already-resolved RunConfig. What is here is not recorded
    in config.yaml, so a run reproduced with `--config RUN/config.yaml` may choose it afresh; `data` and
    `max_slices` are recorded in the checkpoints (and kept by --resume) but are no part of the recipe."""

    out: Path
    data: Path | None = None  # None: the --config file's data_root, on --resume the run's, else the demo phantom
    device: str = "auto"
    resume: bool = False  # continue RUN/last.pt with its own config (the request's epochs/max_steps/patience/lr apply)
    max_minutes: float | None = None  # wall-clock budget; unlike epochs and max_steps not part of the config
    max_slices: int | None = None  # at most this many slices per split (on --resume the run's own)
    num_workers: int = 0
    compile: bool = False
    tensorboard: bool = False
    progress: bool = True
