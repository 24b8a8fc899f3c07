"""Early stopping on one validation metric, with state that round-trips through last.pt."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Which way is better for each metric `--monitor` accepts.
MONITOR_MODES = {"loss": "min", "ssim": "max", "dice": "max"}


@dataclass
class EarlyStopping:
    monitor: str = "loss"
    patience: int = 10
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = 0
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

    def update(self, value: float, epoch: int) -> bool:
        """Record one epoch's metric; returns True when it is the new best (write best.pt)."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), int(epoch), 0
            return True
        self.bad_epochs += 1
        if self.patience is not None and self.patience > 0 and self.bad_epochs >= self.patience:
            self.stopped = True
        return False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            # monitor/patience/min_delta come from the (possibly changed) options of the resumed run
            if hasattr(self, key) and key not in ("monitor", "patience", "min_delta"):
                setattr(self, key, value)
