"""Read the folders a report is built from: training runs, evaluations, prior samples.

A run folder holds ``best.pt`` (or ``last.pt``), ``history.csv``, ``config.yaml``, ``summary.txt``;
an evaluation folder ``metrics.json``, ``per_slice.csv`` and ``figures/``; a samples folder
``samples.json`` and ``samples_grid.png``. A folder that is none of these but contains them (a sweep's
output) is expanded. Anything else is a ``UserInputError`` naming the folder.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prostate_vq.errors import UserInputError
from prostate_vq.evaluation.results import EvaluationResult
from prostate_vq.reporting.shapes import METRICS, SAMPLES, check_shape

REQUIRED_METRICS = ("split", "n_slices", "ssim_mean", "codes_used", "codebook_size")
# The files that name the folder holding them when given to `report` instead of the folder.
FOLDER_FILES = ("best.pt", "last.pt", "history.csv", "config.yaml", "metrics.json", "per_slice.csv", "samples.json")
log = logging.getLogger("prostate_vq.reporting")
if TYPE_CHECKING:
    import pandas as pd
_GENERIC_NAMES = {"run", "eval", "evaluation", "train", "best", "out", "checkpoints"}
_MAX_DEPTH = 3


@dataclass
class RunFolder:
    path: Path
    checkpoint: Path
    payload: dict  # the checkpoint payload without the weights
    history: pd.DataFrame | None = None
    summary_text: str | None = None
    stop_reason: str | None = None

    @property
    def preset(self) -> str:
        return str(self.payload.get("preset", "?"))


@dataclass
class EvalFolder:
    """An evaluation folder: `result` is its metrics.json typed (EvaluationResult.from_json), what the report
    reads; `metrics` the raw dict as read (its shape checked by reporting.shapes)."""

    path: Path
    metrics: dict

    @functools.cached_property
    def result(self) -> EvaluationResult:
        return EvaluationResult.from_json(self.metrics)

    def figure(self, name: str) -> Path | None:
        rel = self.result.figures.get(name)
        path = self.path / rel if rel else None
        return path if path is not None and path.is_file() else None


@dataclass
class SampleFolder:
    path: Path
    info: dict
    grid: Path | None


@dataclass
class PriorFolder:
    """A ``prostate-vq train-prior`` run: its ``metrics.json`` (``kind: prior``)."""

    path: Path
    metrics: dict


@dataclass
class Entry:
    """One model: its run and/or its evaluation."""

    run: RunFolder | None = None
    evaluations: list[EvalFolder] = field(default_factory=list)
    name: str = ""

    @property
    def evaluation(self) -> EvalFolder | None:
        """The test-split evaluation when there is one, else the first given."""
        tests = [e for e in self.evaluations if e.result.split == "test"]
        chosen = tests or self.evaluations
        return chosen[0] if chosen else None

    @property
    def folder(self) -> Path:
        """The run's folder, else the evaluation's (collect makes entries with a run, an evaluation or both)."""
        if self.run is not None:
            return self.run.path
        if self.evaluation is None:
            raise ValueError("an entry with neither a run nor an evaluation")
        return self.evaluation.path

    @property
    def preset(self) -> str:
        if self.run is not None:
            return self.run.preset
        return self.evaluation.result.preset if self.evaluation else "?"

    @property
    def task(self) -> str:
        if self.run is not None:
            return str(self.run.payload.get("task", "?"))
        return self.evaluation.result.task if self.evaluation else "?"


def _is_prior(folder: Path) -> bool:
    try:
        return json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("kind") == "prior"
    except (OSError, ValueError, AttributeError):
        return False


def _kinds(folder: Path) -> list[str]:
    """What a folder holds; one folder may be both a run and an evaluation."""
    if (folder / "metrics.json").is_file() and _is_prior(folder):
        return ["prior"]
    kinds = []
    if (folder / "best.pt").is_file() or (folder / "last.pt").is_file():
        kinds.append("run")
    if (folder / "metrics.json").is_file():
        kinds.append("eval")
    if (folder / "samples.json").is_file():
        kinds.append("samples")
    return kinds


def _expand(folder: Path, depth: int = 0) -> list[tuple[str, Path]]:
    kinds = _kinds(folder)
    if kinds:
        return [(kind, folder) for kind in kinds]
    if depth >= _MAX_DEPTH:
        return []
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += _expand(child, depth + 1)
    return found


def load_run(folder: Path) -> RunFolder:
    from prostate_vq.runtime.checkpoints import load_checkpoint

    checkpoint = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
    payload = load_checkpoint(checkpoint, kind="model")  # raises UserInputError naming the file
    payload = {k: v for k, v in payload.items() if not k.endswith("_state")}
    history = None
    if (folder / "history.csv").is_file():
        import pandas as pd

        try:
            history = pd.read_csv(folder / "history.csv")
        except (ValueError, pd.errors.ParserError) as error:
            raise UserInputError(f"unreadable history.csv ({error})", folder / "history.csv") from None
        _check_history(history, folder / "history.csv")
        if history.empty:
            history = None
    summary_file = folder / "summary.txt"
    summary = summary_file.read_text(encoding="utf-8", errors="replace") if summary_file.is_file() else None
    stop_reason = None
    if (folder / "last.pt").is_file():
        stop_reason = load_checkpoint(folder / "last.pt").get("stop_reason")
    return RunFolder(folder, checkpoint, payload, history, summary, stop_reason)


def _check_history(history, path: Path) -> None:
    """The columns the report computes with hold numbers (empty cells are 'not measured'); every row has its epoch."""
    import pandas as pd

    from prostate_vq.runtime.run_format import HISTORY_COLUMNS

    for column in (c for c in HISTORY_COLUMNS if c in history):
        values = pd.to_numeric(history[column], errors="coerce")
        wrong = history[column][values.isna() & history[column].notna()]
        if len(wrong):
            raise UserInputError(f"column {column} must hold numbers, row {wrong.index[0] + 1} holds {wrong.iloc[0]!r:.40}", path)
    if "epoch" in history and history["epoch"].isna().any():
        raise UserInputError(f"row {int(history['epoch'].isna().idxmax()) + 1} has no epoch", path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"not valid JSON ({error})", path) from None


def load_eval(folder: Path) -> EvalFolder:
    path = folder / "metrics.json"
    metrics = _read_json(path)
    missing = [k for k in REQUIRED_METRICS if not isinstance(metrics, dict) or k not in metrics]
    if missing:
        raise UserInputError(f"not a prostate-vq metrics file (missing {', '.join(missing)})", path)
    check_shape(metrics, METRICS, path)
    if (folder / "per_slice.csv").is_file():
        _check_per_slice(folder / "per_slice.csv", metrics["n_slices"])
    else:
        log.warning("%s: no per_slice.csv: the report has this evaluation's means but links no per-slice results", folder)
    return EvalFolder(folder, metrics)


def _check_per_slice(path: Path, n_slices) -> None:
    """per_slice.csv must belong to metrics.json (one row per slice): a folder mixing two evaluations is refused."""
    if not path.is_file():
        return
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = sum(1 for _ in csv.reader(handle)) - 1
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserInputError(f"unreadable per_slice.csv ({error})", path) from None
    if rows != n_slices:
        raise UserInputError(
            f"{rows} rows but metrics.json counts {n_slices} slices: the folder mixes two evaluations; run evaluate again", path
        )


def load_samples(folder: Path) -> SampleFolder:
    info = _read_json(folder / "samples.json")
    if not isinstance(info, (dict, list)):
        raise UserInputError(f"must be a mapping of sampling settings, got {info!r:.40}", folder / "samples.json")
    check_shape(info, SAMPLES if isinstance(info, dict) else None, folder / "samples.json")
    grid = folder / "samples_grid.png"
    return SampleFolder(folder, info if isinstance(info, dict) else {"samples": info}, grid if grid.is_file() else None)


def _display_name(folder: Path) -> str:
    if folder.name.lower() in _GENERIC_NAMES and folder.parent.name:
        if re.fullmatch(r"seed\d+", folder.parent.name) and folder.parent.parent.name:  # a sweep's CELL/seedK/run
            return f"{folder.parent.parent.name} ({folder.parent.name})"
        return folder.parent.name
    return folder.name


def collect(inputs) -> tuple[list[Entry], list[SampleFolder], list[PriorFolder]]:
    """Entries (a run paired with its evaluations through the evaluated checkpoint), sample folders and
    prior runs."""
    if not inputs:
        raise UserInputError("no run or evaluation folders given")
    runs: dict[Path, RunFolder] = {}
    evals: list[EvalFolder] = []
    samples: list[SampleFolder] = []
    priors: list[PriorFolder] = []
    for given in inputs:
        given = Path(given).expanduser()
        if given.is_file():  # best.pt or metrics.json: its folder is meant; any other file is a mistake
            if given.name not in FOLDER_FILES:
                raise UserInputError(
                    f"a file, not a run, evaluation or samples folder (a file given stands for its "
                    f"folder only if it is one of {', '.join(FOLDER_FILES)})",
                    given,
                )
            given = given.parent
        if not given.exists():
            raise UserInputError("folder not found", given)
        found = _expand(given)
        if not found:
            raise UserInputError(
                "not a run, evaluation, prior or samples folder (expected best.pt, "
                "metrics.json or samples.json, here or in a sub-folder)",
                given,
            )
        for kind, folder in found:
            key = folder.resolve()
            if kind == "run" and key not in runs:
                runs[key] = load_run(folder)
            elif kind == "eval" and all(e.path.resolve() != key for e in evals):
                evals.append(load_eval(folder))
            elif kind == "samples" and all(s.path.resolve() != key for s in samples):
                samples.append(load_samples(folder))
            elif kind == "prior" and all(p.path.resolve() != key for p in priors):
                priors.append(PriorFolder(folder, json.loads((folder / "metrics.json").read_text(encoding="utf-8"))))

    entries: dict[Path, Entry] = {key: Entry(run=run) for key, run in runs.items()}
    for evaluation in evals:
        checkpoint = Path(evaluation.result.checkpoint).expanduser()
        run_key = checkpoint.parent.resolve() if str(checkpoint) not in ("", ".") else evaluation.path.resolve()
        if run_key not in entries:
            run = None
            if checkpoint.is_file() and "run" in _kinds(checkpoint.parent):
                try:  # the evaluated run was not given but still exists: use it for the model section
                    run = load_run(checkpoint.parent)
                except UserInputError:
                    run = None
            entries[run_key] = Entry(run=run)
        entries[run_key].evaluations.append(evaluation)
    result = list(entries.values())
    for entry in result:
        if entry.run is not None and not entry.evaluations:
            log.warning(
                "%s: a run without an evaluation (no per-slice test results): the report shows its best "
                "validation epoch; run prostate-vq evaluate --checkpoint %s and add its folder",
                entry.run.path,
                entry.run.checkpoint,
            )
    _name(result)
    return result, samples, priors


def _name(entries: list[Entry]) -> None:
    presets = [e.preset for e in entries]
    for entry in entries:
        if presets.count(entry.preset) == 1 and entry.preset != "?":
            entry.name = entry.preset
        else:
            entry.name = _display_name(entry.folder)
    seen: dict[str, int] = {}
    for entry in entries:
        seen[entry.name] = seen.get(entry.name, 0) + 1
        if seen[entry.name] > 1:
            entry.name = f"{entry.name} ({seen[entry.name]})"
