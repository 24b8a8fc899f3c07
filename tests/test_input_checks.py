"""Issue 13: checkpoints validated by kind and version, option ranges, --resume that says what it keeps and
makes --epochs/--lr true, absolute data roots, the NIfTI header guard, escaped report text."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
from dataclasses import fields, replace
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from prostate_vq.cli import main
from prostate_vq.errors import DataError, UserInputError
from prostate_vq.runtime.checkpoints import check_payload, load_checkpoint
from prostate_vq.training import TrainOptions, train


def _err_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("prostate-vq: ")]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def _lrs(run) -> list[float]:
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        return [float(row["lr"]) for row in csv.DictReader(handle)]


@pytest.fixture
def base(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides, train_args):
    """A tiny 2-epoch run's (TrainOptions, RunRequest)."""
    return train_args(
        out=tmp_path / "run",
        data=phantom_root,
        epochs=2,
        spatial_size=tiny_spatial,
        batch_size=4,
        device="cpu",
        progress=False,
        overrides=list(tiny_model_overrides),
    )


def _with(run, **changes):
    """`run` with some options changed, each in the object that holds it (as the command line would give them)."""
    options, request = run
    runtime = {f.name for f in fields(TrainOptions)}
    return (
        replace(options, **{k: v for k, v in changes.items() if k in runtime}),
        replace(request, **{k: v for k, v in changes.items() if k not in runtime}),
    )


# --- checkpoints by kind and version -------------------------------------------------------------


@pytest.mark.parametrize("version", [99, 0, "2.0", None, True])
def test_other_format_versions_are_refused(tiny_run, version):
    payload = load_checkpoint(tiny_run / "best.pt")
    payload.pop("format_version") if version is None else payload.update(format_version=version)
    with pytest.raises(UserInputError, match="format_version"):
        check_payload(payload, "model", "x.pt")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.pop("task"), "no 'task'"),
        (lambda p: p.update(spatial_size=[64]), "spatial_size"),
        (lambda p: p.update(task="audio"), "task 'audio'"),
        (lambda p: p["config"].update(model=3), "no model section"),
    ],
)
def test_a_model_checkpoint_lacking_what_evaluation_needs_is_one_line(tiny_run, phantom_root, tmp_path, capsys, change, message):
    payload = load_checkpoint(tiny_run / "best.pt")
    change(payload)
    torch.save(payload, tmp_path / "broken.pt")
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "broken.pt"),
                "--data",
                str(phantom_root),
                "--out",
                str(tmp_path / "e"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    line = _err_line(capsys)
    assert message in line and "broken.pt" in line


def test_best_copied_over_last_is_refused_for_resume(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copy(run / "best.pt", run / "last.pt")
    assert main(["train", "--out", str(run), "--resume", "--device", "cpu", "--no-progress"]) == 2
    assert "best.pt holds the weights only" in _err_line(capsys)


def test_prior_checkpoint_without_its_vqvae_is_one_line(tiny_run, tmp_path, capsys):
    payload = load_checkpoint(tiny_run / "best.pt")
    payload.update(kind="prior", layout={})
    torch.save(payload, tmp_path / "prior.pt")
    assert main(["sample", "--prior", str(tmp_path / "prior.pt"), "--out", str(tmp_path / "s")]) == 2
    assert "no 'vqvae'" in _err_line(capsys)


def test_malicious_checkpoint_keeps_its_reason(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    torch.save({"model_state": Payload(), "config": {}}, tmp_path / "evil.pt")
    with pytest.raises(UserInputError) as caught:
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "owned").exists()
    assert "system" in str(caught.value) and "refused" in str(caught.value)


# --- option ranges ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "training.grad_clip=-1"], "grad_clip"),
        (["--max-minutes", "0"], "--max-minutes"),
        (["--max-minutes", "nan"], "--max-minutes"),
        (["--patience", "-1"], "patience"),
        (["--num-workers", "-1"], "--num-workers"),
        # --set values are checked against the type and range of the value they replace (issue 14's tracebacks)
        (["--set", "model.channels=abc"], "channels must be a non-empty list"),
        (["--set", "model.channels=[]"], "channels must be a non-empty list"),
        (["--set", "model.channels=[-4]"], "channels must be a list of positive integers"),
        (["--set", "training.lr=abc"], "lr must be a finite number"),
        (["--set", "training.epochs=[1]"], "epochs must be a finite number"),
        (["--set", "quantizer.codebook_size=0"], "codebook_size must be at least 1"),
        (["--set", "quantizer.codebook_size=-5"], "codebook_size must be at least 1"),
        (["--set", "quantizer.beta=abc"], "beta must be a finite number"),
    ],
)
def test_out_of_range_options_are_one_line(base, capsys, extra, message):
    options, request = base
    h, w = request.spatial_size
    args = [
        "train",
        "--data",
        str(options.data),
        "--out",
        str(options.out),
        "--epochs",
        "1",
        "--spatial-size",
        str(h),
        str(w),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]
    if "--set" not in extra:
        args += ["--set", *request.overrides]
    else:
        args += request.overrides
    assert main(args) == 2
    assert message in _err_line(capsys)
    assert not (options.out / "last.pt").exists()


def test_set_values_that_fit_pass_unchanged_in_kind():
    from prostate_vq.models.presets import apply_overrides, get_preset

    cfg = apply_overrides(
        get_preset("v1-vq"),
        [
            "quantizer.beta=0",
            "training.lr=1e-3",
            "model.res_layers=0",
            "training.augment=true",
            "training.grad_clip=null",
            "quantizer.codebook_size=256.0",
        ],
    )
    assert cfg["quantizer"]["beta"] == 0 and cfg["training"]["lr"] == 1e-3 and cfg["model"]["res_layers"] == 0
    assert cfg["training"]["augment"] is True and cfg["training"]["grad_clip"] is None
    assert cfg["quantizer"]["codebook_size"] == 256 and type(cfg["quantizer"]["codebook_size"]) is int
    assert apply_overrides(get_preset("v1-vq"), ["quantizer.kind=fsq"])["quantizer"]["kind"] == "fsq"


def test_resume_with_negative_epochs_and_refit_with_negative_epochs(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "-5", "--device", "cpu", "--no-progress"]) == 2
    assert "--epochs must be at least 1" in _err_line(capsys)
    assert (
        main(
            [
                "refit",
                "--checkpoint",
                str(tiny_run / "best.pt"),
                "--out",
                str(tmp_path / "r"),
                "--codebook-size",
                "8",
                "--epochs",
                "-1",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "--epochs must be at least 1" in _err_line(capsys)


def test_manifest_check_wants_a_validate_split(phantom_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    for name in ("keras_slices_validate", "keras_slices_seg_validate"):
        shutil.rmtree(root / name)
    assert main(["manifest", "--data", str(root), "--check"]) == 2
    assert "no validate slices" in capsys.readouterr().err


def test_train_warns_of_patients_in_train_and_validate(caplog):
    from prostate_vq.training.vqvae.data import warn_if_leaking

    record = lambda case: SimpleNamespace(case=case)  # noqa: E731
    train_ds = SimpleNamespace(records=[record("004"), record("005")])
    val_ds = SimpleNamespace(records=[record("005"), record("006")])
    assert warn_if_leaking(train_ds, val_ds, "root") == ["005"]
    assert "patients in both train and validate: 005" in caplog.text
    assert warn_if_leaking(train_ds, SimpleNamespace(records=[record("007")]), "root") == []


# --- resume -----------------------------------------------------------------------------------


def test_more_epochs_on_resume_continue_down_instead_of_climbing(base):
    """A finished 2-epoch run ends at the cosine's floor. Extended to 6 epochs, the old schedule re-planned the
    cosine from the start (0.002, 0.0001 | 0.0015, 0.00105, ...: back up); now the rate continues from where it is
    down to the floor over the added steps, which for a finished run is the floor itself."""
    train(*base)
    train(*_with(base, epochs=6, resume=True))
    lrs = _lrs(base[0].out)
    lr, floor = 2e-3, 2e-3 * 0.05  # the default preset's recipe, min_lr_ratio 0.05
    assert lrs[0] == pytest.approx(lr) and len(lrs) == 6
    assert lrs[2:] == pytest.approx([floor] * 4, rel=1e-6)
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in itertools.pairwise(lrs))


def test_lr_on_resume_applies_and_is_announced(base, caplog):
    train(*base)
    caplog.set_level("INFO", logger="prostate_vq")
    train(*_with(base, epochs=3, lr=1e-5, resume=True, task="mask"))
    assert _lrs(base[0].out)[2] < 1e-5 + 1e-12
    assert "resuming after epoch 2" in caplog.text and "ignored on --resume: --task mask" in caplog.text


def test_data_root_is_absolute_and_other_data_is_refused_on_resume(base, phantom_root, tmp_path, monkeypatch):
    monkeypatch.chdir(phantom_root.parent)
    train(*_with(base, data=type(phantom_root)(phantom_root.name)))  # a relative --data
    stored = load_checkpoint(base[0].out / "last.pt")["data_root"]
    assert os.path.isabs(stored) and os.path.samefile(stored, phantom_root)
    other = tmp_path / "other"
    shutil.copytree(phantom_root, other)
    with pytest.raises(UserInputError, match="continues on the data the run was trained on"):
        train(*_with(base, data=other, epochs=3, resume=True))


# --- files ------------------------------------------------------------------------------------


def _lying_header(path, shape=(32767, 32767)):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\0" * 68)
    return path


def test_nifti_header_claiming_gigabytes_is_refused_before_reading(tmp_path):
    from prostate_vq.data.importer import read_volume
    from prostate_vq.data.nifti import read_array

    path = _lying_header(tmp_path / "case_004_week_0_slice_0.nii")
    with pytest.raises(DataError, match="header claims 32767x32767"):
        read_array(path)
    with pytest.raises(DataError, match="header claims 32767x32767"):
        read_volume(path)
    with pytest.raises(DataError, match="truncated"):
        read_array(_lying_header(tmp_path / "small.nii", (64, 64)))


def test_report_shows_run_file_text_never_renders_it(tiny_run, phantom_root, tmp_path):
    from prostate_vq.evaluation import evaluate_checkpoint
    from prostate_vq.reporting import write_report

    evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=tmp_path / "e", device="cpu", figures=False)
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text(encoding="utf-8"))
    metrics.update(preset="<img src=x onerror=alert(1)>", split="<script>alert(1)</script>")
    (tmp_path / "e" / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    text = write_report([tmp_path / "e"], tmp_path / "report.md").read_text(encoding="utf-8")
    rendered = "".join(part for k, part in enumerate(text.split("```")) if k % 2 == 0)  # code blocks show text
    assert "<script>" not in rendered and "<img src=x" not in rendered
    assert "&lt;script>" in text


def test_an_unreadable_split_folder_is_one_line(phantom_root, monkeypatch, capsys):
    import errno

    import prostate_vq.data.manifest as manifest

    def unreadable(root):
        raise PermissionError(errno.EACCES, "Permission denied", str(root / "keras_slices_train"))

    monkeypatch.setattr(manifest, "build_manifest", unreadable)
    assert main(["manifest", "--data", str(phantom_root)]) == 2
    line = _err_line(capsys)
    assert "keras_slices_train: Permission denied" in line


def test_a_size_the_allocator_refuses_is_one_line(monkeypatch, capsys):
    """Issue 14: a --spatial-size whose buffers cannot be allocated ended in an allocator traceback."""
    import prostate_vq.models.summary as summary

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
            "you tried to allocate 1099511627776 bytes."
        )

    monkeypatch.setattr(summary, "model_summary", refuse)
    assert main(["summary", "--preset", "default", "--spatial-size", "524288", "524288"]) == 2
    line = _err_line(capsys)
    assert "out of memory" in line and "you tried to allocate 1099511627776 bytes" in line and "--spatial-size" in line

    def other(*args, **kwargs):
        raise RuntimeError("a bug, not a size")

    monkeypatch.setattr(summary, "model_summary", other)
    with pytest.raises(RuntimeError, match="a bug"):  # real errors keep their traceback
        main(["summary", "--preset", "default"])


# --- issue 24: one line, exit 2, whatever way an option arrives ------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synth", "--out", "{tmp}/x", "--seed", "-1"], "--seed must be 0 or more"),
        (["train", "--out", "{tmp}/r", "--seed", "99999999999999999999999"], "--seed must be at most"),
        (["train-prior", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/p", "--max-minutes", "0"], "--max-minutes"),
        (
            ["train-prior", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/p", "--max-minutes", "nan"],
            "--max-minutes must be a finite number",
        ),
        (
            ["refit", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/r", "--codebook-size", "8", "--epochs", "0"],
            "--epochs must be at least 1",
        ),
        (
            ["refit", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/r", "--codebook-size", "8", "--max-minutes", "-1"],
            "--max-minutes must be above 0",
        ),
        (
            ["refit", "--checkpoint", "{tmp}/none.pt", "--out", "{tmp}/r", "--codebook-size", "8", "--max-minutes", "nan"],
            "--max-minutes must be a finite number",
        ),
        (
            ["sample", "--prior", "{tmp}/none.pt", "--out", "{tmp}/s", "--temperature", "inf"],
            "--temperature must be a finite number",
        ),
        (["demo", "--out", "{tmp}/d", "--minutes", "nan"], "--minutes must be a finite number"),
        (["summary", "--spatial-size", "0", "0"], "--spatial-size must be a list of integers of at least 16"),
        (
            ["summary", "--spatial-size", "63", "64"],
            "divisible by 4 and at least 8 for this model (downsample 4): the nearest that works is --spatial-size 64 64",
        ),
        (
            ["summary", "--preset", "vqvae2", "--set", "model.downsample=16", "--spatial-size", "16", "16"],
            "the nearest that works is --spatial-size 64 64",
        ),
        (
            ["summary", "--preset", "vqvae2", "--set", "model.downsample=16", "--spatial-size", "32", "32"],  # a 1x1 top map
            "at least 64 for this model (downsample 32)",
        ),
        (["summary", "--set", "quantizer.codebook_dim=1000000"], "codebook_dim must be at most 4096"),
        (["summary", "--set", "model.channels=[100000]"], "channels must be a list of integers of at most 4096"),
    ],
)
def test_command_line_numbers_are_checked_by_the_schema_before_any_work(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in _err_line(capsys)
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(
    "text, message",
    [
        ("quantizer: {codebook_size: abc}", "quantizer.codebook_size must be a finite number"),
        ("quantizer: {codebook_size: -5}", "quantizer.codebook_size must be at least 1"),
        ("quantizer: {beta: [1]}", "quantizer.beta must be a finite number"),
        ("seed: abc", "seed must be a finite number"),
        ("seed: [1]", "seed must be a finite number"),
        ("seed: 1.5", "seed must be a whole number"),
        ("seed: -3", "seed must be 0 or more"),
    ],
)
def test_config_file_values_are_checked_like_set_values(base, tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(f"base: default\n{text}\n", encoding="utf-8")
    options, _ = base
    assert (
        main(
            [
                "train",
                "--data",
                str(options.data),
                "--out",
                str(options.out),
                "--config",
                str(config),
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 2
    )
    line = _err_line(capsys)
    assert message in line and "bad.yaml" in line
    assert not (options.out / "last.pt").exists()


def _foreign_weights(payload):
    payload["model_state"]["quantizer.fsq.project_in.weight"] = torch.zeros(4, 4)


def _nan_weights(payload):
    name = next(k for k, v in payload["model_state"].items() if v.is_floating_point())
    payload["model_state"][name] = torch.full_like(payload["model_state"][name], float("nan"))


@pytest.mark.parametrize("verb", ["refit", "evaluate", "train-prior", "encode"])
@pytest.mark.parametrize(
    "change, message", [(_foreign_weights, "do not match its own config"), (_nan_weights, "non-finite (NaN or Inf) weights")]
)
def test_a_checkpoint_inconsistent_with_itself_is_one_line(tiny_run, phantom_root, tmp_path, capsys, verb, change, message):
    payload = load_checkpoint(tiny_run / "best.pt")
    change(payload)
    torch.save(payload, tmp_path / "odd.pt")
    extra = {"refit": ["--codebook-size", "8"], "evaluate": [], "train-prior": [], "encode": []}[verb]
    assert (
        main(
            [
                verb,
                "--checkpoint",
                str(tmp_path / "odd.pt"),
                "--data",
                str(phantom_root),
                "--out",
                str(tmp_path / ("o.npz" if verb == "encode" else "o")),
                "--device",
                "cpu",
                *extra,
            ]
        )
        == 2
    )
    line = _err_line(capsys)
    assert "inconsistent" in line and message in line and "odd.pt" in line


@pytest.fixture(scope="module")
def tiny_eval(tiny_run, phantom_root, tmp_path_factory):
    """An evaluation folder of `tiny_run` (metrics.json, per_slice.csv; no figures). Read-only."""
    from prostate_vq.evaluation import evaluate_checkpoint

    out = tmp_path_factory.mktemp("tiny_eval") / "eval"
    evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=out, device="cpu", figures=False)
    return out


def _edit_json(path, change):
    value = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(value)), encoding="utf-8")


@pytest.mark.parametrize(
    "folder, edit, message",
    [
        (
            "eval",
            lambda f: _edit_json(f / "metrics.json", lambda m: {**m, "ssim_mean": "abc"}),
            "metrics.json: ssim_mean must be a number",
        ),
        (
            "eval",
            lambda f: _edit_json(f / "metrics.json", lambda m: {**m, "levels": [3]}),
            "metrics.json: levels[0] must be a mapping",
        ),
        (
            "eval",
            lambda f: _edit_json(f / "metrics.json", lambda m: {**m, "per_patient": {"cases": {"004": 1}}}),
            "metrics.json: per_patient.cases.004 must be a mapping",
        ),
        (
            "run",
            lambda f: (f / "history.csv").write_text(
                (f / "history.csv").read_text(encoding="utf-8").replace("\n1,", "\nx,", 1), encoding="utf-8"
            ),
            "history.csv: column epoch must hold numbers",
        ),
        (
            "samples",
            lambda f: (f / "samples.json").write_text('{"n": 4, "summary": 3}', encoding="utf-8"),
            "samples.json: summary must be a mapping",
        ),
        ("samples", lambda f: (f / "samples.json").write_text('"abc"', encoding="utf-8"), "samples.json: must be a mapping"),
    ],
)
def test_report_on_malformed_inputs_is_one_line(tiny_run, tiny_eval, tmp_path, capsys, folder, edit, message):
    given = tmp_path / folder
    if folder == "samples":
        given.mkdir()
    else:
        shutil.copytree(tiny_run if folder == "run" else tiny_eval, given)
    edit(given)
    assert main(["report", str(given), "--out", str(tmp_path / "report.md")]) == 2
    assert message in _err_line(capsys)
    assert not (tmp_path / "report.md").exists()


def test_a_symlink_loop_and_an_undecodable_out_are_one_line(tiny_run, tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "a"),
                "--out",
                str(tmp_path / "r"),
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "a loop of symbolic links" in _err_line(capsys)
    out = os.fsdecode(bytes(tmp_path) + b"/r\xff.md")
    assert main(["report", str(tiny_run), "--out", out]) == 2
    assert "not valid UTF-8" in _err_line(capsys)


def test_sigterm_says_so_like_ctrl_c(monkeypatch, capsys):
    import signal
    import time

    import prostate_vq.cli as cli

    def killed(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "cmd_studies", killed)
    assert main(["studies"]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


# --- written where it must not be -----------------------------------------------------------------


@pytest.mark.parametrize("verb", ["train", "train-prior"])
def test_a_lock_planted_as_a_symlink_is_refused_and_its_target_untouched(tiny_run, phantom_root, tmp_path, capsys, verb):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n", encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(outside)
    argv = ["train", "--epochs", "1"] if verb == "train" else ["train-prior", "--checkpoint", str(tiny_run / "best.pt")]
    assert main([*argv, "--data", str(phantom_root), "--out", str(run), "--device", "cpu", "--no-progress"]) == 2
    assert ".lock: is a symbolic link" in _err_line(capsys)
    assert outside.read_text(encoding="utf-8") == "keep me\n"


@pytest.mark.parametrize("name", ["history.csv", "config.yaml", "best.pt"])
def test_report_refuses_to_overwrite_its_own_input(tiny_run, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / name).read_bytes()
    assert main(["report", str(run), "--out", str(run / name)]) == 2
    assert "--out is one of the report's inputs" in _err_line(capsys)
    assert (run / name).read_bytes() == before


@pytest.mark.parametrize("name", ["<img src=x onerror=alert(1)>", "x](javascript:alert(1))"])
def test_folder_names_never_reach_markdown_raw(tiny_run, tiny_eval, tmp_path, name):
    from urllib.parse import unquote

    from prostate_vq.reporting import write_report

    folder = tmp_path / name
    shutil.copytree(tiny_eval, folder / "eval")
    (folder / "eval" / "figures").mkdir()
    (folder / "eval" / "figures" / "f.png").write_bytes(b"png")
    _edit_json(folder / "eval" / "metrics.json", lambda m: {**m, "figures": {"reconstructions": "figures/f.png"}})
    text = write_report([folder / "eval"], tmp_path / "report.md").read_text(encoding="utf-8")
    rendered = "".join(part for k, part in enumerate(text.split("```")) if k % 2 == 0)  # code blocks show text
    assert name not in rendered and "<img" not in rendered
    import re

    links = re.findall(r"\]\(([^)\s]+)\)", rendered)
    assert links and all((tmp_path / unquote(link)).is_file() for link in links)  # the links still resolve


@pytest.fixture(scope="module")
def tiny_prior(tiny_run, tmp_path_factory):
    from prostate_vq.prior.train import train_prior

    return train_prior(
        tiny_run / "best.pt",
        out=tmp_path_factory.mktemp("tiny_prior") / "prior",
        epochs=1,
        batch_size=4,
        device="cpu",
        progress=False,
        arch_options={"dim": 16, "layers": 2},
    )


def _sample(prior, out, n):
    return ["sample", "--prior", str(prior / "best.pt"), "--n", str(n), "--out", str(out), "--device", "cpu"]


def test_sample_into_earlier_samples_replaces_them_whole_and_says_so(tiny_prior, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(_sample(tiny_prior, out, 3)) == 0
    user_file = out / "slices" / "notes.txt"
    user_file.write_text("mine", encoding="utf-8")
    capsys.readouterr()
    assert main(_sample(tiny_prior, out, 2)) == 0
    assert "replaced the earlier samples" in capsys.readouterr().err
    info = json.loads((out / "samples.json").read_text(encoding="utf-8"))
    listed = {r["file"].split("/")[-1] for r in info["samples"]}
    assert {p.name for p in (out / "slices").iterdir()} == listed | {"notes.txt"}  # no stale slice beside them


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc")
def test_a_full_disk_during_sample_leaves_no_slices_without_samples_json(tiny_prior, tmp_path, capsys, monkeypatch):
    import errno

    original = os.fsync

    def full(fd):  # the disk fills up just as samples.json is written, after the slices
        if "samples.json" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(fd)

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "s"
    assert main(_sample(tiny_prior, out, 2)) == 2
    assert "No space left" in _err_line(capsys)
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing changed: no slice files without samples.json


# --- resume: every option given is applied or named as ignored ------------------------------------


def _resume(run, *extra):
    return ["train", "--out", str(run), "--resume", "--device", "cpu", "--no-progress", *extra]


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--monitor", "ssim"], "ignored on --resume: --monitor ssim"),
        (["--mask-ratio", "0.3"], "ignored on --resume: --mask-ratio 0.3"),
        (["--seed", "7"], "ignored on --resume: --seed 7"),
        (["--max-slices", "2"], "ignored on --resume: --max-slices 2"),
        (["--config", "{tmp}/other.yaml"], "ignored on --resume: --config"),
        (["--lr", "1e-3"], "applied: --epochs 3, --lr 0.001"),
    ],
)
def test_resume_names_every_option_it_ignores_or_applies(tiny_run, tmp_path, capsys, extra, named):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (tmp_path / "other.yaml").write_text("base: v3-ema\n", encoding="utf-8")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(_resume(run, "--epochs", "3", *extra)) == 0
    resuming = next(line for line in capsys.readouterr().err.splitlines() if "resuming after epoch 2" in line)
    assert named in resuming
    assert "seed 0, all slices" in resuming  # what the checkpoint keeps is said too
    payload = load_checkpoint(run / "last.pt")
    assert payload["seed"] == 0 and payload["max_slices"] is None and payload["config"]["training"]["monitor"] == "loss"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "1"], "--epochs 1: the run has already done 2 epochs"),
        (["--max-steps", "2"], "--max-steps 2: the run has already done 6 optimizer steps"),
    ],
)
def test_resume_with_a_budget_below_what_is_done_is_refused(tiny_run, tmp_path, capsys, extra, message):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "config.yaml").read_text(encoding="utf-8")
    assert main(_resume(run, *extra)) == 2
    assert message in _err_line(capsys)
    assert (run / "config.yaml").read_text(encoding="utf-8") == before  # not rewritten to epochs: 1


def test_config_with_preset_is_refused_and_config_data_root_is_used(tiny_run, phantom_root, tmp_path, capsys):
    assert main(["train", "--config", str(tiny_run / "config.yaml"), "--preset", "v3-ema", "--out", str(tmp_path / "r")]) == 2
    assert "--preset v3-ema and --config" in _err_line(capsys)
    from prostate_vq.cli import _run_request, build_parser
    from prostate_vq.training.config import resolve

    request = _run_request(
        build_parser().parse_args(["train", "--config", str(tiny_run / "config.yaml"), "--out", str(tmp_path / "r")])
    )
    assert os.path.samefile(resolve(request).data_root, phantom_root)  # the run's data, not the demo phantom


@pytest.mark.parametrize("verb", [["train"], ["evaluate", "--checkpoint", "x.pt"], ["synth"]])
def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch, verb):
    monkeypatch.chdir(tmp_path)
    assert main([*verb, "--out", ""]) == 2
    assert "--out must name a folder or file" in _err_line(capsys)
    assert not any(tmp_path.iterdir())


def test_report_given_a_stray_file_is_one_line(tiny_run, tmp_path, capsys):
    stray = tmp_path / "run"
    shutil.copytree(tiny_run, stray)
    (stray / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["report", str(stray / "notes.txt"), "--out", str(tmp_path / "r.md")]) == 2
    assert "notes.txt: a file, not a run" in _err_line(capsys)
    assert main(["report", str(stray / "best.pt"), "--out", str(tmp_path / "r.md")]) == 0  # best.pt: its run


@pytest.mark.parametrize("given", ["run", "eval"])
def test_report_says_when_per_slice_results_are_missing(tiny_run, tiny_eval, tmp_path, capsys, given):
    folder = tmp_path / given
    shutil.copytree(tiny_run if given == "run" else tiny_eval, folder)
    (folder / "per_slice.csv").unlink(missing_ok=True)
    assert main(["report", str(folder), "--out", str(tmp_path / "r.md")]) == 0
    err = capsys.readouterr().err
    assert ("a run without an evaluation" if given == "run" else "no per_slice.csv") in err


@pytest.mark.parametrize("section, key", [("model", "channels"), ("quantizer", "codebook_size")])
@pytest.mark.parametrize("verb", ["encode", "resume"])
def test_a_checkpoint_with_a_broken_config_is_named(tiny_run, phantom_root, tmp_path, capsys, section, key, verb):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run / name, weights_only=True)
        payload["config"][section][key] = "abc"
        torch.save(payload, run / name)
    argv = (
        [
            "encode",
            "--checkpoint",
            str(run / "best.pt"),
            "--data",
            str(phantom_root),
            "--out",
            str(tmp_path / "c.npz"),
            "--device",
            "cpu",
        ]
        if verb == "encode"
        else _resume(run, "--epochs", "3")
    )
    assert main(argv) == 2
    line = _err_line(capsys)
    assert ("best.pt" if verb == "encode" else "last.pt") in line and f"{section}.{key} must be" in line


def test_evaluate_removes_the_staging_folder_of_an_evaluation_killed_earlier(tiny_run, tiny_eval, phantom_root, tmp_path):
    from prostate_vq.evaluation import evaluate_checkpoint

    out = tmp_path / "eval"
    shutil.copytree(tiny_eval, out)
    left = out / ".eval.prostate-vq-abcd1234.tmp"  # what a SIGKILL mid-write leaves behind
    left.mkdir()
    (left / "per_slice.csv").write_text("half", encoding="utf-8")
    (out / ".notes.tmp").write_text("mine", encoding="utf-8")  # a user's file is never ours
    evaluate_checkpoint(tiny_run / "best.pt", data=phantom_root, out=out, device="cpu", figures=False)
    assert not left.exists() and (out / ".notes.tmp").exists()
