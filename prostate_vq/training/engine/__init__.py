"""The engine: the one training loop and what it writes to the run folder (early stopping, history.csv,
best.pt/last.pt of the loop state, config and summary files, progress). What differs between models is a
plug-in (`Plugin`): the VQ-VAE's (training.vqvae, ReFiT through it) and the prior's (prostate_vq.prior.train).
It knows nothing of VQ-VAEs: tests/test_engine.py drives it with a model-free plug-in."""

from prostate_vq.training.engine.early_stopping import MONITOR_MODES, EarlyStopping
from prostate_vq.training.engine.loop import (
    Engine,
    EpochResult,
    LoopState,
    Plugin,
    budget_deadline,
    restore_training_state,
)
from prostate_vq.training.engine.optim import make_optimizer, make_scheduler, retune_schedule
from prostate_vq.training.engine.run_folder import RunWriter, versions

__all__ = [
    "MONITOR_MODES",
    "EarlyStopping",
    "Engine",
    "EpochResult",
    "LoopState",
    "Plugin",
    "RunWriter",
    "budget_deadline",
    "make_optimizer",
    "make_scheduler",
    "restore_training_state",
    "retune_schedule",
    "versions",
]
