"""The notebooks in docs/ run top to bottom (PROSTATE_VQ_FAST=1, on the demo phantom) and are committed
without outputs. Each execution takes about a minute of CPU."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

DOCS = Path(__file__).resolve().parent.parent / "docs"
NOTEBOOKS = ["01_quickstart.ipynb", "02_compare_variants.ipynb", "03_generate.ipynb"]
CELL_TIMEOUT_S = 300
KERNEL = "prostate-vq-python"


def _read(name: str):
    return nbformat.read(str(DOCS / name), as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell still has outputs (strip them before committing)"
        assert cell.execution_count is None, f"{name}: a cell still has an execution count"
    assert 'os.environ.get("PROSTATE_VQ_FAST") == "1"' in code[0].source + code[1].source


SYNC = "jupytext --sync docs/notebooks/*.py"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_match_their_jupytext_source(name):
    """docs/X.ipynb is paired with docs/notebooks/X.py ([tool.jupytext] in pyproject.toml): an edit made in
    only one of them fails here."""
    jupytext = pytest.importorskip("jupytext")
    source = DOCS / "notebooks" / name.replace(".ipynb", ".py")
    assert source.is_file(), f"{name} has no jupytext source {source.relative_to(DOCS.parent)}"
    expected = [(c.cell_type, c.source) for c in jupytext.read(source).cells]
    committed = [(c.cell_type, c.source) for c in _read(name).cells]
    assert committed == expected, f"docs/{name} differs from {source.relative_to(DOCS.parent)}: edit the .py, then run {SYNC}"


def test_every_jupytext_source_has_its_notebook():
    assert sorted(p.name for p in (DOCS / "notebooks").glob("*.py")) == [n.replace(".ipynb", ".py") for n in NOTEBOOKS]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_uses_public_api_only(name):
    """Notebooks call the package's public modules, not its private helpers."""
    for cell in _read(name).cells:
        if cell.cell_type != "code":
            continue
        python = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))  # magics
        for node in ast.walk(ast.parse(python)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prostate_vq"):
                assert not any(a.name.startswith("_") for a in node.names), f"{name}: private import"
                assert node.module.count(".") <= 1, f"{name}: import from an inner module {node.module}"


def _kernel_spec(folder: Path) -> str:
    """A kernelspec that runs this very interpreter (the one with prostate_vq installed), found through
    JUPYTER_PATH: nothing is installed into the user's Jupyter folders, and a stale or PATH-dependent
    system `python3` spec cannot pick another Python."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "prostate-vq tests",
                "language": "python",
            }
        ),
        encoding="utf-8",
    )
    return str(folder)


def _final_value(nb) -> dict:
    """The value the last code cell displays (a dict literal of plain numbers and strings)."""
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    results = [o for o in last.outputs if o.output_type == "execute_result"]
    assert results, "the last cell displays no result"
    return ast.literal_eval(results[-1].data["text/plain"])


def _errors(nb) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run each notebook once per test session (in a temporary folder, fast mode, CPU only)."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    jupyter_path = _kernel_spec(tmp_path_factory.mktemp("jupyter"))
    cache: dict[str, object] = {}

    def run(name: str):
        if name not in cache:
            nb = _read(name)
            work = tmp_path_factory.mktemp(name.split(".")[0])
            env = {
                "PROSTATE_VQ_FAST": "1",
                "PROSTATE_VQ_RUNS": str(work / "runs"),
                "CUDA_VISIBLE_DEVICES": "",
                "JUPYTER_PATH": os.pathsep.join(p for p in (jupyter_path, os.environ.get("JUPYTER_PATH")) if p),
            }
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)  # the kernel inherits this process's environment
            try:
                NotebookClient(
                    nb,
                    timeout=CELL_TIMEOUT_S,
                    kernel_name=KERNEL,
                    allow_errors=False,
                    resources={"metadata": {"path": str(work)}},
                ).execute()
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            keep = os.environ.get("PROSTATE_VQ_NOTEBOOK_OUT")  # keep the executed copies to look at
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, str(Path(keep) / name))
            cache[name] = nb
        return cache[name]

    return run


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_quickstart_runs(executed):
    nb = executed("01_quickstart.ipynb")
    assert not _errors(nb)
    metrics = _final_value(nb)
    assert metrics["preset"] == "default" and metrics["task"] == "image"
    assert 0.0 < metrics["ssim_mean"] <= 1.0
    assert metrics["verdict"] in ("pass", "fail")
    assert 0 < metrics["codes_used"] <= metrics["codebook_size"]
    assert _images(nb) >= 5  # masks, history, reconstructions, error maps, codebook usage


@pytest.mark.slow
def test_compare_variants_runs(executed):
    nb = executed("02_compare_variants.ipynb")
    assert not _errors(nb)
    summary = _final_value(nb)
    assert {"v1-vq", "v3-ema", "v4-rq", "fsq", "lfq", "ReFiT"} <= set(summary)
    for name, row in summary.items():
        assert 0.0 < row["ssim_mean"] <= 1.0, name
        assert 0.0 < row["codebook_usage_pct"] <= 100.0, name
    joint = next(row for name, row in summary.items() if name.endswith("-joint"))
    assert 0.0 <= joint["dice_mean"] <= 1.0
    assert _images(nb) >= 4


@pytest.mark.slow
def test_generate_runs(executed):
    nb = executed("03_generate.ipynb")
    assert not _errors(nb)
    result = _final_value(nb)
    assert result["n"] == 8 and result["similarity"] == "ssim"
    assert 0.0 < result["nearest_train_similarity_mean"] <= 1.0
    assert result["samples_closer_than_any_validation_slice"] is not None
    assert 0.0 <= result["samples_closer_than_any_validation_slice"] <= 1.0
    assert _images(nb) >= 4
