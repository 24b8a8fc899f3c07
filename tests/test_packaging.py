"""A user's fresh environment has only what pyproject.toml declares: every third-party module the package
imports must be declared (the development image ships extra packages, scipy among them)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "vector_quantize_pytorch": "vector-quantize-pytorch",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extra: str | None = None) -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(config["dependencies"]) + list(config.get("optional-dependencies", {}).get(extra, []))
    return {_normalise(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for req in requirements}


def _imports(folder: Path) -> dict[str, str]:
    """Top-level third-party modules imported anywhere under `folder` (function-local imports too)."""
    found = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "prostate_vq":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_every_package_import_is_declared():
    """Required, or an optional extra (other than dev) whose absence the importing code turns into one line."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [name for name in config.get("optional-dependencies", {}) if name != "dev"]
    declared = _declared().union(*(_declared(extra) for extra in extras))
    missing = {
        name: where
        for name, where in _imports(ROOT / "prostate_vq").items()
        if _normalise(DISTRIBUTIONS.get(name, name)) not in declared
    }
    assert not missing, f"imported but not in pyproject.toml dependencies: {missing}"


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_scipy_is_not_needed():
    assert "scipy" not in _imports(ROOT / "prostate_vq")


def test_phantom_blur_equals_scipy_where_installed():
    ndimage = pytest.importorskip("scipy.ndimage")
    from prostate_vq.data.phantom import gaussian_filter

    rng = np.random.default_rng(0)
    for shape, sigma, mode in (((3, 40, 20), 1.2, "wrap"), ((1, 64, 32), 24, "wrap"), ((2, 30, 17), 0.8, "reflect")):
        x = rng.standard_normal(shape).astype(np.float32)
        expected = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode=mode)
        assert np.abs(gaussian_filter(x, sigma, mode) - expected).max() < 1e-6


def test_training_progress_is_one_plain_line_per_epoch_off_a_terminal(
    phantom_root, tmp_path, capsys, tiny_spatial, tiny_model_overrides
):
    """Logs, CI and cluster jobs: no bars, no carriage returns or escape codes (stdout is not a terminal here)."""
    from prostate_vq.training import RunRequest, TrainOptions, train

    train(
        TrainOptions(out=tmp_path / "run", data=phantom_root, device="cpu", progress=True),
        RunRequest(epochs=3, spatial_size=tiny_spatial, batch_size=4, overrides=list(tiny_model_overrides)),
    )
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "val_ssim=" in lines[0]
    for text in (captured.out, captured.err):
        assert "\r" not in text and "\x1b[" not in text


def test_labels_are_resized_at_pixel_centres():
    """Old behaviour: floor-nearest label sampling shifted a centred disc by 0.375 px against the area-resampled
    image at a 4x reduction; nearest-exact samples pixel centres (1/8 px left for an even factor)."""
    import torch

    from prostate_vq.data.transforms import FitSized

    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    disc = ((yy - 127.5) ** 2 + (xx - 127.5) ** 2 < 60**2).float()
    out = FitSized(["image", "label"], (64, 64))({"image": disc[None], "label": disc[None].long()})

    def centre(t):
        t = t[0].float()
        return float((t * torch.arange(t.shape[0]).float()[:, None]).sum() / t.sum())

    assert abs(centre(out["label"]) - centre(out["image"])) < 0.2
