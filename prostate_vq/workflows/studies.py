"""The reference tables as studies (studies.yaml beside this file): data that `sweep --study NAME` runs and
`prostate-vq studies` lists; each names its cells, its reference cell and the columns of its table."""

from __future__ import annotations

from functools import cache
from importlib import resources

from prostate_vq.errors import UserInputError
from prostate_vq.workflows.grid import Cell, cell_name, expand, value_text

STUDY_KEYS = {"title", "source", "claim", "task", "presets", "grid", "cells", "reference", "columns", "metrics"}


@cache
def _studies() -> dict:
    import yaml

    text = resources.files("prostate_vq.workflows").joinpath("studies.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def study_names() -> list[str]:
    return list(_studies())


def get_study(name: str) -> dict:
    studies = _studies()
    if name not in studies:
        raise UserInputError(f"unknown study {name!r}; choose one of {', '.join(studies)} (prostate-vq studies)")
    study = dict(studies[name])
    unknown = set(study) - STUDY_KEYS
    if unknown:  # a packaging mistake, caught by the test that loads every study
        raise ValueError(f"study {name}: unknown key(s) {', '.join(sorted(unknown))}")
    return {"name": name, **study}


def study_cells(study: dict) -> list[Cell]:
    """The study's cells: presets x grid (the grid's values as `--set` writes them), or its explicit cells."""
    if study.get("cells"):
        cells = []
        for item in study["cells"]:
            overrides = tuple(item.get("set") or ())
            values = dict(o.split("=", 1) for o in overrides)
            cells.append(Cell(str(item.get("name") or cell_name(item["preset"], values)), str(item["preset"]), overrides, values))
        return cells
    axes = [(key, [value_text(v) for v in values]) for key, values in (study.get("grid") or {}).items()]
    return expand(list(study["presets"]), axes)


def list_studies() -> str:
    """`prostate-vq studies`: one block per study."""
    lines = []
    for name in study_names():
        study = get_study(name)
        cells = study_cells(study)
        lines.append(f"{name}: {study['title']} ({len(cells)} cells, {study.get('task', 'image')} task)")
        lines.append(f"    source: {study['source']}")
        lines.append(f"    claim:  {study['claim']}")
    return "\n".join(lines)
