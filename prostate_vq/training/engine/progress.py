"""Progress for the engine's epochs and a plug-in's steps: tqdm bars on a terminal, one plain line per epoch
otherwise (logs, CI, cluster jobs), and warnings printed above running bars instead of through them."""

from __future__ import annotations

import contextlib
import sys
import warnings


def interactive() -> bool:
    """Progress bars only on a terminal: logs, CI and cluster jobs get one plain line per epoch."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class EpochLines:
    """The epoch bar's interface (set_postfix, update, close) printing one plain line per epoch to stdout."""

    def __init__(self, start: int, epochs: int):
        self.epoch, self.epochs = start - 1, epochs
        self.postfix: dict[str, object] = {}

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
