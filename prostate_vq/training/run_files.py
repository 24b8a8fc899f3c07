"""What rank 0 writes into a run folder besides checkpoints: config.yaml, summary.txt, history.csv,
TensorBoard events, distributed.json; plus the progress bars."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import warnings
from pathlib import Path

import torch

from prostate_vq.errors import UserInputError
from prostate_vq.files import ensure_dir, remove_stale_temps, write_text_atomic
from prostate_vq.training import distributed as ddp
from prostate_vq.training.checkpoints import save_checkpoint
from prostate_vq.training.history import HISTORY_COLUMNS, write_history

log = logging.getLogger("prostate_vq.training")


class RunWriter:
    """Everything rank 0 writes into the run folder; a no-op on other ranks."""

    def __init__(self, out: Path, active: bool, tensorboard: bool):
        self.out = Path(out)
        self.active = active
        self.tb = None
        if active:
            ensure_dir(self.out)
            remove_stale_temps(self.out)  # our own writes cut short by a kill -9 (never a user's .tmp file)
        if active and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserInputError("--tensorboard needs the tensorboard package: "
                                     "pip install 'prostate-vq[tensorboard]'") from None
            self.tb = SummaryWriter(log_dir=str(self.out / "tb"))

    def config(self, cfg: dict, extra: dict) -> None:
        if self.active:
            import yaml

            write_text_atomic(self.out / "config.yaml", yaml.safe_dump({**extra, **cfg}, sort_keys=False))

    def summary(self, text: str) -> None:
        if self.active:
            write_text_atomic(self.out / "summary.txt", text)

    def checkpoint(self, name: str, payload: dict) -> None:
        if self.active:
            save_checkpoint(self.out / name, payload)

    def history(self, rows: list[dict], epoch_row: dict, columns: tuple[str, ...] = HISTORY_COLUMNS) -> None:
        if not self.active:
            return
        write_history(self.out / "history.csv", rows, columns)
        if self.tb is not None:
            for key, value in epoch_row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, epoch_row["epoch"])
            self.tb.flush()

    def visuals(self, step: int, images: torch.Tensor, recon: torch.Tensor | None, counts: torch.Tensor | None) -> None:
        """TensorBoard: a grid of validation slices over their reconstructions, and how often each code was used
        (a histogram over code indices: dead codes are the gaps)."""
        if self.tb is None:
            return
        if recon is not None:
            self.tb.add_images("reconstructions/input_then_output",
                               torch.cat([images, recon]).float().clamp(0, 1).cpu(), step)
        if counts is not None and len(counts):
            counts = torch.as_tensor(counts).double().cpu()
            index = torch.arange(len(counts), dtype=torch.float64)
            self.tb.add_histogram_raw("codebook/code_usage", min=0, max=len(counts) - 1, num=int(counts.sum()),
                                      sum=float((counts * index).sum()), sum_squares=float((counts * index ** 2).sum()),
                                      bucket_limits=(index + 0.5).tolist(), bucket_counts=counts.tolist(),
                                      global_step=step)
        self.tb.flush()

    def hparams(self, params: dict, metrics: dict) -> None:
        """TensorBoard's hparams table: this run's configuration beside its final metrics, so `tensorboard
        --logdir SWEEP` compares the cells of a sweep (written into the run's own event folder)."""
        if self.tb is None:
            return
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(params).items()
                if v is not None}
        finite = {f"hparam/{k}": float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        self.tb.add_hparams(flat, finite, run_name=".")
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"model": {"channels": [32]}} -> {"model.channels": [32]}."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def versions() -> dict:
    import monai

    from prostate_vq import __version__

    return {"prostate_vq": str(__version__), "torch": str(torch.__version__), "monai": str(monai.__version__)}


def record_rank_sync(writer: RunWriter, core, dist_ctx) -> None:
    """Gather every rank's weight/codebook fingerprint into distributed.json (rank 0 writes it)."""

    fingerprints = ddp.state_fingerprint(ddp.unwrap(core), dist_ctx)
    in_sync = all(all(row == rows[0] for row in rows) for rows in fingerprints.values())
    if not in_sync:
        diverged = [name for name, rows in fingerprints.items() if any(row != rows[0] for row in rows)]
        log.warning("ranks hold different model state after training: %s", ", ".join(diverged[:5]))
    if writer.active:
        write_text_atomic(writer.out / "distributed.json", json.dumps(
            {"world_size": dist_ctx.world_size, "backend": dist_ctx.backend, "state_in_sync": in_sync,
             "fingerprints": fingerprints}, indent=1))


def interactive() -> bool:
    """Progress bars only on a terminal: logs, CI and cluster jobs get one plain line per epoch."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class EpochLines:
    """The epoch bar's interface (set_postfix, update, close) printing one plain line per epoch to stdout."""

    def __init__(self, start: int, epochs: int):
        self.epoch, self.epochs, self.postfix = start - 1, epochs, {}

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.epoch += n
        fields = "  ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(f"epoch {self.epoch}/{self.epochs}  {fields}".rstrip(), flush=True)

    def close(self) -> None:
        pass


def epoch_bar(enabled: bool, start: int, epochs: int):
    if not enabled:
        return None
    if not interactive():
        return EpochLines(start, epochs)
    from tqdm.auto import tqdm

    return tqdm(total=epochs, initial=start - 1, desc="epochs", unit="epoch", dynamic_ncols=True)


def step_bar(enabled: bool, total: int, epoch: int, epochs: int):
    if not enabled or not interactive():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def warnings_above_bars(enabled: bool):
    """While progress bars run, print warnings (e.g. codebook collapse) above the bars instead of
    through them; the text is whatever `warnings.formatwarning` makes of it (the CLI: one line)."""
    if not enabled or not interactive():
        yield
        return
    from tqdm.auto import tqdm

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        tqdm.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"), file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
