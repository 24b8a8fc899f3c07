"""A sweep's cells and jobs: presets x `--grid section.key=v1,v2` axes (cartesian) x seeds.

A cell is one configuration (a preset plus overrides); a job is one (cell, seed), an independent and resumable
run in `OUT/<cell>/seed<k>/{run,eval}`. Jobs are listed in one deterministic order, so `--shard i/n` gives every
machine of a job array its own share and the shares cover every job exactly once.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from prostate_vq.errors import UserInputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


@dataclass(frozen=True)
class Cell:
    name: str  # its folder under the sweep
    preset: str
    overrides: tuple[str, ...] = ()  # the grid's `section.key=value` for this cell, after the sweep's --set
    values: dict = field(default_factory=dict, compare=False, hash=False)  # grid key -> value text

    def to_dict(self) -> dict:
        return {"name": self.name, "preset": self.preset, "overrides": list(self.overrides), "values": dict(self.values)}

    @classmethod
    def from_dict(cls, data: dict) -> Cell:
        return cls(str(data["name"]), str(data["preset"]), tuple(data.get("overrides") or ()), dict(data.get("values") or {}))


@dataclass(frozen=True)
class Job:
    cell: Cell
    seed: int

    def folder(self, out: Path) -> Path:
        return Path(out) / self.cell.name / f"seed{self.seed}"


def value_text(value) -> str:
    """A grid value as `--set` writes it (YAML): true/false, numbers and lists as typed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    return str(value)


def split_top_level(text: str) -> list[str]:
    """`8,16` -> ['8', '16']; `[8,8,8],[8,5,5,5]` -> ['[8,8,8]', '[8,5,5,5]'] (commas inside brackets stay)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_grid(items: list[str] | None) -> list[tuple[str, list[str]]]:
    """`--grid quantizer.codebook_dim=4,8,16` (several allowed) -> [(key, [values])], checked for shape only
    (the values are checked against each preset when the cells are built)."""
    axes: list[tuple[str, list[str]]] = []
    for item in items or []:
        key, sep, listed = item.partition("=")
        key = key.strip()
        if not sep or "." not in key or not split_top_level(listed):
            raise UserInputError(f"--grid {item!r} must look like section.key=v1,v2,... (e.g. quantizer.codebook_dim=4,8)")
        if any(key == k for k, _ in axes):
            raise UserInputError(f"--grid names {key} twice")
        values = split_top_level(listed)
        if len(set(values)) != len(values):
            raise UserInputError(f"--grid {key} lists a value twice")
        axes.append((key, values))
    return axes


def cell_name(preset: str, values: dict) -> str:
    """`v1-vq` or `v1-vq__codebook_dim=4__l2_normalize=true` (the key's last part unless two axes share it)."""
    if not values:
        return preset
    lasts = [key.rpartition(".")[2] for key in values]
    parts = []
    for key, value in values.items():
        label = key.rpartition(".")[2] if lasts.count(key.rpartition(".")[2]) == 1 else key
        value = re.sub(r"[\[\]{}\s]", "", str(value)).replace(",", "_")  # [8,5,5,5] -> 8_5_5_5
        parts.append(_UNSAFE.sub("_", f"{label}={value}").strip("_"))
    return "__".join([preset, *parts])


def expand(presets: list[str], axes: list[tuple[str, list[str]]]) -> list[Cell]:
    """Every preset x every combination of the grid's values, in the order given."""
    cells = []
    combos = list(itertools.product(*[values for _, values in axes])) if axes else [()]
    for preset in presets:
        for combo in combos:
            values = {key: value for (key, _), value in zip(axes, combo)}
            cells.append(Cell(cell_name(preset, values), preset, tuple(f"{k}={v}" for k, v in values.items()), values))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise UserInputError(
            "two cells of the sweep would share a folder: " + ", ".join(sorted({n for n in names if names.count(n) > 1}))
        )
    return cells


def parse_seeds(text: str | None, default: int = 0) -> list[int]:
    """`--seeds 0,1,2` (or a range `0-4`); duplicates refused."""
    if text is None or str(text).strip() == "":
        return [int(default)]
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if re.fullmatch(r"\d+-\d+", part):
                lo, hi = (int(v) for v in part.split("-"))
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UserInputError(f"--seeds {text!r}: use whole numbers like 0,1,2 or 0-4") from None
    if not seeds or any(s < 0 or s >= 2**32 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserInputError(f"--seeds {text!r}: give distinct seeds from 0 to 2^32 - 1")
    return seeds


def jobs_of(cells: list[Cell], seeds: list[int]) -> list[Job]:
    """Seed-major: with --shard, each machine gets a spread of cells and a first seed of every cell comes first."""
    return [Job(cell, seed) for seed in seeds for cell in cells]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`--shard i/n` (0 <= i < n), e.g. `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UserInputError(f"--shard {text!r} must be i/n with 0 <= i < n (e.g. 0/4 ... 3/4)")
    return int(match[1]), int(match[2])


def shard(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Job j belongs to shard j mod count: deterministic, disjoint, and together the shards cover every job."""
    return [job for j, job in enumerate(jobs) if j % count == index]
