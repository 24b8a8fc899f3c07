"""history.csv: one row per finished epoch, rewritten whole (and atomically) from the list kept in last.pt,
so a resumed run never duplicates or loses rows."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from prostate_vq.files import write_text_atomic

# train_loss includes the quantizer's auxiliary terms (what the optimizer minimises); val_loss is the task
# loss alone (what selection and early stopping use); the quantizer terms have columns of their own.
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_ssim", "val_dice", "codebook_usage_pct",
                   "perplexity", "dead_codes_restarted", "lr", "seconds", "train_quantizer_loss",
                   "val_quantizer_loss", "step")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_history(path: str | Path, rows: list[dict], columns: tuple[str, ...] = HISTORY_COLUMNS) -> Path:
    """The VQ-VAE's columns unless a plug-in names its own (the prior's NLL in bits per code)."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    write_text_atomic(path, buffer.getvalue())
    return path
