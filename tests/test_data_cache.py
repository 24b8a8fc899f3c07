"""default_data_root(): generated once, atomically, into $PROSTATE_VQ_CACHE."""

from __future__ import annotations

import json

import pytest

from prostate_vq.data import cache, discover
from prostate_vq.data.phantom import synthesize


@pytest.fixture
def tiny_default(monkeypatch, tmp_path):
    calls = []

    def tiny(out):
        calls.append(out)
        return synthesize(out, cases=3, slices_per_volume=2, weeks=1)

    monkeypatch.setenv("PROSTATE_VQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "synthesize", tiny)
    return calls


def test_generated_once_into_the_cache_folder(tiny_default, tmp_path):
    root = cache.default_data_root()
    assert root == tmp_path / "cache" / "demo-phantom"
    assert len(discover(root)["train"]) == 2
    assert cache.default_data_root() == root and len(tiny_default) == 1
    assert sorted(p.name for p in root.parent.iterdir()) == ["demo-phantom"]  # no temporary folders left


def test_stale_or_half_written_phantom_is_replaced(tiny_default, tmp_path):
    root = tmp_path / "cache" / "demo-phantom"
    (root / "keras_slices_train").mkdir(parents=True)  # a half dataset without phantom.json
    assert cache.default_data_root() == root
    info = json.loads((root / "phantom.json").read_text(encoding="utf-8"))
    assert info["cases"] == 3 and len(tiny_default) == 1
    assert sorted(p.name for p in root.parent.iterdir()) == ["demo-phantom"]


def test_failed_generation_leaves_nothing(monkeypatch, tmp_path):
    def broken(out):
        (out / "keras_slices_train").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setenv("PROSTATE_VQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "synthesize", broken)
    with pytest.raises(KeyboardInterrupt):
        cache.default_data_root()
    assert list((tmp_path / "cache").iterdir()) == []
