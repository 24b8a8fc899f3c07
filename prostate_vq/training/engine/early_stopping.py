"""Early stopping on one validation metric, with state that round-trips through last.pt.

Patience is counted in optimizer steps as well as in validations: on a small dataset an epoch is a
handful of steps, so "10 epochs" would stop a run after a few dozen updates. A run stops only when
both counts are exhausted and it has trained for at least `min_steps` steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

# Which way is better for each metric `--monitor` accepts.
MONITOR_MODES: dict[str, Literal["min", "max"]] = {"loss": "min", "ssim": "max", "dice": "max"}


@dataclass
class EarlyStopping:
    monitor: str = "loss"
    patience: int = 10  # validations (epochs) without improvement; <= 0 disables early stopping
    min_delta: float = 0.0
    patience_steps: int = 0  # optimizer steps since the best validation
    min_steps: int = 0  # never stop before this many optimizer steps
    best: float | None = None
    best_epoch: int = 0
    best_step: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    @property
    def mode(self) -> str:
        return MONITOR_MODES[self.monitor]

    def improved(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int, step: int | None = None) -> bool:
        """Record one validation (after `step` optimizer steps in all); True when it is the new best."""
        step = int(epoch if step is None else step)
        if self.improved(value):
            self.best, self.best_epoch, self.best_step, self.bad_epochs = float(value), int(epoch), step, 0
            return True
        self.bad_epochs += 1
        if (
            self.patience is not None
            and self.patience > 0
            and self.bad_epochs >= self.patience
            and step - self.best_step >= self.patience_steps
            and step >= self.min_steps
        ):
            self.stopped = True
        return False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            # the settings come from the (possibly changed) options of the resumed run
            if hasattr(self, key) and key not in ("monitor", "patience", "min_delta", "patience_steps", "min_steps"):
                setattr(self, key, value)
