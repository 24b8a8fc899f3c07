"""What rank 0 writes into a run folder: best.pt/last.pt (through the runtime's atomic checkpoint I/O),
config.yaml, summary.txt, history.csv, TensorBoard events, distributed.json.

history.csv is one row per finished epoch, rewritten whole (and atomically) from the list kept in last.pt, so a
resumed run never duplicates or loses rows; its columns are the plug-in's."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import torch

from prostate_vq.errors import UserInputError
from prostate_vq.files import ensure_dir, remove_stale_temps, write_text_atomic
from prostate_vq.runtime import distributed as ddp
from prostate_vq.runtime.checkpoints import save_checkpoint

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
                raise UserInputError(
                    "--tensorboard needs the tensorboard package: pip install 'prostate-vq[tensorboard]'"
                ) from None
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

    def history(self, rows: list[dict], epoch_row: dict, columns: tuple[str, ...]) -> None:
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
            self.tb.add_images("reconstructions/input_then_output", torch.cat([images, recon]).float().clamp(0, 1).cpu(), step)
        if counts is not None and len(counts):
            counts = torch.as_tensor(counts).double().cpu()
            index = torch.arange(len(counts), dtype=torch.float64)
            self.tb.add_histogram_raw(
                "codebook/code_usage",
                min=0,
                max=len(counts) - 1,
                num=int(counts.sum()),
                sum=float((counts * index).sum()),
                sum_squares=float((counts * index**2).sum()),
                bucket_limits=(index + 0.5).tolist(),
                bucket_counts=counts.tolist(),
                global_step=step,
            )
        self.tb.flush()

    def hparams(self, params: dict, metrics: dict) -> None:
        """TensorBoard's hparams table: this run's configuration beside its final metrics, so `tensorboard
        --logdir SWEEP` compares the cells of a sweep (written into the run's own event folder)."""
        if self.tb is None:
            return
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(params).items() if v is not None}
        finite = {
            f"hparam/{k}": float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
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
        write_text_atomic(
            writer.out / "distributed.json",
            json.dumps(
                {
                    "world_size": dist_ctx.world_size,
                    "backend": dist_ctx.backend,
                    "state_in_sync": in_sync,
                    "fingerprints": fingerprints,
                },
                indent=1,
            ),
        )


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_history(path: str | Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    """history.csv with the plug-in's columns (the VQ-VAE's, the prior's NLL in bits per code); NaN is empty."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    write_text_atomic(path, buffer.getvalue())
    return path
