"""The config schema is the one home of defaults and checks: presets, --set values and options meet it."""

from __future__ import annotations

import pytest

from prostate_vq import schema
from prostate_vq.errors import UserInputError
from prostate_vq.models import MODEL_DEFAULTS, apply_overrides, get_preset, list_presets
from prostate_vq.models.presets import resolve
from prostate_vq.training.config import check_training_config


def test_defaults_come_from_the_schema():
    assert MODEL_DEFAULTS == schema.defaults("model")
    assert schema.defaults("training") == {key: getattr(schema.TrainingConfig(), key) for key in schema.keys("training")}


@pytest.mark.parametrize("name", [n for n, _ in list_presets()])
def test_every_preset_is_valid_and_complete(name):
    cfg = get_preset(name)
    assert set(cfg["training"]) == set(schema.keys("training")) and set(cfg["model"]) == set(schema.keys("model"))
    check_training_config(cfg["training"], "image")


@pytest.mark.parametrize(
    ("section", "bad", "message"),
    [
        ("training", {"lr": 0}, "training.lr must be above 0, got 0"),
        ("training", {"optimizer": "sgd"}, "training.optimizer must be one of adam, adamw"),
        ("training", {"mask_ratio": 1.0}, "training.mask_ratio must be below 1"),
        ("training", {"spatial_size": [8, 8]}, "at least 16"),
        ("model", {"downsample": 3}, "model.downsample must be one of 2, 4, 8, 16"),
        ("refit", {"codebook_size": 1}, "refit.codebook_size must be at least 2"),
        ("refit", {"bogus": 1}, "unknown refit option(s) bogus"),
    ],
)
def test_a_preset_section_that_breaks_the_schema_is_one_line(section, bad, message):
    cfg = {"model": {}, "quantizer": {"kind": "vq"}, "training": {}, section: bad}
    with pytest.raises(UserInputError) as caught:
        resolve(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_set_is_checked_by_the_schema_and_names_the_override():
    with pytest.raises(UserInputError, match=r"--set refit.lr=-1: lr must be above 0"):
        apply_overrides(get_preset("v2-refit"), ["refit.lr=-1"])
    with pytest.raises(UserInputError, match="valid refit keys"):
        apply_overrides(get_preset("v2-refit"), ["refit.bogus=1"])
    assert apply_overrides(get_preset("default"), ["training.grad_clip=null"])["training"]["grad_clip"] is None


def test_config_file_is_base_preset_plus_sections_and_checked(tmp_path, capsys):
    from prostate_vq.cli import _run_request, build_parser, main
    from prostate_vq.training.config import resolve as resolve_run

    good = tmp_path / "my.yaml"
    good.write_text("base: v1-vq\ntask: joint\nseed: 3\nmodel: {channels: [8, 16]}\ntraining: {lr: 1e-3}\n", encoding="utf-8")
    request = _run_request(
        build_parser().parse_args(
            ["train", "--config", str(good), "--out", str(tmp_path / "r"), "--set", "quantizer.codebook_size=64", "--epochs", "2"]
        )
    )
    config = resolve_run(request)
    cfg = config.sections()
    assert (config.preset, config.task, config.seed) == ("v1-vq", "joint", 3)
    assert cfg["model"]["channels"] == [8, 16] and cfg["model"]["downsample"] == get_preset("v1-vq")["model"]["downsample"]
    assert cfg["training"]["lr"] == 0.001 and cfg["training"]["epochs"] == 2  # file < --set < options
    assert cfg["quantizer"]["codebook_size"] == 64

    bad = tmp_path / "bad.yaml"
    bad.write_text("base: v1-vq\ntraining: {lr: -1}\n", encoding="utf-8")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.yaml" in err and "training.lr must be above 0" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_a_resolved_config_is_typed_and_round_trips_to_the_checkpoint_dict():
    """Config is resolved once into typed objects; the dict form (checkpoint `config`, config.yaml) is unchanged."""
    cfg = apply_overrides(get_preset("v2-refit"), ["training.lr=0.001"])
    config = schema.RunConfig.from_sections(cfg, preset="v2-refit", task="joint", seed=4)
    assert isinstance(config.training, schema.TrainingConfig) and config.training.lr == 0.001
    assert isinstance(config.refit, schema.RefitConfig) and config.quantizer.kind == cfg["quantizer"]["kind"]
    assert config.sections() == cfg and list(config.sections()) == list(cfg)
    assert schema.TrainingConfig().spatial_size == list(schema.DEFAULT_SPATIAL_SIZE)
