"""Nothing lost: the run-folder lock, the clean-up of our own temporaries only, atomic outputs, a full disk
as one line, and an evaluation folder that is consistent or untouched."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from prostate_vq.cli import main
from prostate_vq.errors import UserInputError
from prostate_vq.files import atomic_open, folder_lock, is_own_temp, staged_files, write_text_atomic
from prostate_vq.runtime.checkpoints import load_checkpoint
from prostate_vq.training import RunRequest, TrainOptions, train


@pytest.fixture
def options(phantom_root, tmp_path, tiny_spatial, tiny_model_overrides, train_args):
    """A tiny run's (TrainOptions, RunRequest)."""

    def make(out, **kwargs):
        base = dict(
            out=out,
            data=phantom_root,
            epochs=1,
            spatial_size=tiny_spatial,
            batch_size=4,
            overrides=list(tiny_model_overrides),
            device="cpu",
            progress=False,
        )
        return train_args(**{**base, **kwargs})

    return make


def _train_args(run: tuple[TrainOptions, RunRequest], *extra: str) -> list[str]:
    opts, request = run
    assert request.spatial_size is not None
    h, w = request.spatial_size
    return [
        "train",
        "--data",
        str(opts.data),
        "--out",
        str(opts.out),
        "--epochs",
        str(request.epochs),
        "--spatial-size",
        str(h),
        str(w),
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
        "--set",
        *request.overrides,
    ]


def _own_temps(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if is_own_temp(p))


def _one_line(capsys) -> str:
    """The error is one line; the CLI's own "prostate-vq: ..." progress lines may precede it."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("prostate-vq: ")]
    assert len(lines) == 1, lines
    return lines[0]


# --- the atomic writer ----------------------------------------------------------------------


def test_disk_full_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "metrics.json"
    write_text_atomic(target, "old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with (
        pytest.raises(UserInputError, match="metrics.json.*No space left") as caught,
        atomic_open(target, "w", encoding="utf-8") as handle,
    ):
        handle.write("new, half")
        full()
    assert str(target) in str(caught.value)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_torch_save_on_a_full_disk_is_one_line_not_unexpected_pos(tmp_path, monkeypatch):
    """torch.save turns the OSError of a full disk into `RuntimeError: ... unexpected pos`."""
    from prostate_vq.runtime.checkpoints import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model_state": {"w": torch.ones(3)}, "config": {}, "epoch": 1, "format_version": 1})

    def save_to_full_disk(obj, handle, *args, **kwargs):
        class Full:
            def __init__(self):
                self.n = 0

            def write(self, data):
                self.n += len(data)
                if self.n > 200:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return handle.write(data)

            def flush(self):
                handle.flush()

        return original(obj, Full(), *args, **kwargs)

    original = torch.save
    monkeypatch.setattr(torch, "save", save_to_full_disk)
    with pytest.raises(UserInputError, match="last.pt"):
        save_checkpoint(path, {"model_state": {"w": torch.zeros(10000)}, "config": {}, "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_outputs_get_the_usual_permissions_not_mkstemp_0600(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    (tmp_path / "a").write_text("old a")
    with pytest.raises(RuntimeError), staged_files() as stage:
        with stage.open(tmp_path / "a", "w") as handle:
            handle.write("new a")
        raise RuntimeError("failure before b")
    assert (tmp_path / "a").read_text() == "old a" and sorted(os.listdir(tmp_path)) == ["a"]


# --- the run folder -------------------------------------------------------------------------


def test_train_removes_only_its_own_temporaries(options, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".notes.tmp").write_text("the user's own notes")
    (out / ".last.pt.prostate-vq-k3j2h1.tmp").write_bytes(b"half a checkpoint from a kill -9")
    train(*options(out))
    assert (out / ".notes.tmp").read_text() == "the user's own notes"
    assert not (out / ".last.pt.prostate-vq-k3j2h1.tmp").exists() and _own_temps(out) == []


_HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(60)
""")


@pytest.fixture
def busy_folder(tmp_path):
    """A folder another process is working in (it holds the lock until killed)."""
    folder = tmp_path / "busy"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield folder, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_second_process_is_refused_while_a_run_trains(options, busy_folder, capsys):
    folder, proc = busy_folder
    assert main(_train_args(options(folder))) == 2
    err = _one_line(capsys)
    assert str(folder) in err and "another prostate-vq process" in err
    assert not (folder / "last.pt").exists() and not (folder / "config.yaml").exists()

    proc.kill()  # the holder dies: the kernel releases its lock, the folder is usable at once
    proc.wait()
    assert main(_train_args(options(folder))) == 0
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_resume_and_train_prior_are_refused_while_the_folder_is_busy(options, busy_folder, tiny_run, capsys):
    from prostate_vq.prior.train import train_prior

    folder, _ = busy_folder
    shutil.copy(tiny_run / "last.pt", folder / "last.pt")
    assert main(_train_args(options(folder), "--resume")) == 2
    assert str(folder) in _one_line(capsys)
    with pytest.raises(UserInputError, match="another prostate-vq process"):
        train_prior(tiny_run / "best.pt", out=folder, device="cpu", epochs=1)


def test_lock_is_released_after_the_run(options, tmp_path):
    out = tmp_path / "run"
    train(*options(out))
    with folder_lock(out):  # would raise if the run had kept it
        pass


def test_disk_full_during_resume_is_one_line_and_keeps_the_checkpoints(options, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    train(*options(out))
    before = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt", "history.csv")}
    original = torch.save

    def save_to_full_disk(obj, handle, *args, **kwargs):
        handle.write(b"a few bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from OSError(
            errno.ENOSPC, "No space left on device"
        )

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    assert main(_train_args(options(out, epochs=2), "--resume")) == 2
    monkeypatch.setattr(torch, "save", original)
    err = _one_line(capsys)
    assert ".pt" in err and str(out) in err and "Traceback" not in err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert _own_temps(out) == []


def test_unwritable_out_is_one_line(options, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(_train_args(options(blocker / "run"))) == 2
    assert "a-file" in _one_line(capsys)
    if os.geteuid() != 0:
        locked = tmp_path / "read-only"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert main(_train_args(options(locked / "run"))) == 2
            assert "read-only" in _one_line(capsys)
        finally:
            locked.chmod(0o700)


# --- evaluation folders ---------------------------------------------------------------------


def _evaluate_args(checkpoint, data, out) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), "--device", "cpu"]


def test_a_failing_write_mid_evaluate_leaves_the_previous_evaluation(tiny_run, phantom_root, tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    out = tmp_path / "eval"
    assert main(_evaluate_args(tiny_run / "best.pt", phantom_root, out) + ["--max-slices", "4"]) == 0
    capsys.readouterr()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    original = Figure.savefig

    def disk_full_at_the_third_figure(fig, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            handle.write(b"\x89PNG half a figure")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(fig, handle, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", disk_full_at_the_third_figure)
    assert main(_evaluate_args(tiny_run / "best.pt", phantom_root, out)) == 2  # all 6 test slices this time
    err = _one_line(capsys)
    assert "No space left" in err and str(out / "figures" / "worst_slices.png") in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and _own_temps(out) == []
    assert json.loads((out / "metrics.json").read_text())["n_slices"] == 4


def test_evaluate_replaces_a_per_slice_symlink_not_its_target(tiny_run, phantom_root, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    precious = tmp_path / "precious.csv"
    precious.write_text("someone else's data\n")
    (out / "per_slice.csv").symlink_to(precious)
    assert main(_evaluate_args(tiny_run / "best.pt", phantom_root, out)) == 0
    assert precious.read_text() == "someone else's data\n"
    assert not (out / "per_slice.csv").is_symlink() and (out / "per_slice.csv").read_text().startswith("file,")


def test_report_refuses_an_evaluation_folder_mixing_two_runs(tiny_run, phantom_root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_evaluate_args(tiny_run / "best.pt", phantom_root, out)) == 0
    rows = (out / "per_slice.csv").read_text().splitlines()
    (out / "per_slice.csv").write_text("\n".join(rows[:3]) + "\n")  # a per_slice.csv of another evaluation
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "report.md")]) == 2
    err = _one_line(capsys)
    assert "per_slice.csv" in err and "2 rows" in err and "6 slices" in err
    assert not (tmp_path / "report.md").exists()


# --- every other output ---------------------------------------------------------------------


@pytest.fixture
def full_disk(monkeypatch):
    """From now on writes fail as on a full disk when they are made durable (fsync): every write, or only
    those to a file whose name contains `only` (Linux: the name is read from /proc)."""
    original = os.fsync

    def fill(only: str | None = None):
        def fsync(fd):
            if only is None or only in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    return fill


def _unchanged_after_disk_full(capsys, path, args, full_disk, only=None) -> None:
    before = path.read_bytes()
    capsys.readouterr()
    full_disk(only)
    assert main(args) == 2
    err = _one_line(capsys)
    assert "No space left" in err and str(path.parent) in err
    assert path.read_bytes() == before and _own_temps(path.parent) == []


def test_manifest_out_is_atomic(phantom_root, tmp_path, capsys, full_disk):
    args = ["manifest", "--data", str(phantom_root), "--out", str(tmp_path / "manifest.csv")]
    assert main(args) == 0
    _unchanged_after_disk_full(capsys, tmp_path / "manifest.csv", args, full_disk)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc")
def test_report_is_atomic(tiny_run, tmp_path, capsys, full_disk):
    args = ["report", str(tiny_run), "--out", str(tmp_path / "report.md")]
    assert main(args) == 0
    _unchanged_after_disk_full(capsys, tmp_path / "report.md", args, full_disk, only="report.md")


def test_samples_and_codes_are_atomic(tiny_run, tmp_path, capsys, full_disk):
    from prostate_vq.prior.train import train_prior

    prior = train_prior(
        tiny_run / "best.pt",
        out=tmp_path / "prior",
        epochs=1,
        batch_size=4,
        device="cpu",
        progress=False,
        arch_options={"dim": 16, "layers": 2},
    )
    samples = ["sample", "--prior", str(prior / "best.pt"), "--n", "2", "--out", str(tmp_path / "s"), "--device", "cpu"]
    encode = ["encode", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path / "codes.npz"), "--device", "cpu"]
    assert main(samples) == 0 and main(encode) == 0
    slices = sorted((tmp_path / "s" / "slices").iterdir())
    assert slices and all(p.read_bytes()[:2] == b"\x1f\x8b" for p in slices)  # still gzipped NIfTI
    _unchanged_after_disk_full(capsys, tmp_path / "s" / "samples.json", samples, full_disk)
    _unchanged_after_disk_full(capsys, tmp_path / "codes.npz", encode, full_disk)


def test_evaluate_and_sample_out_pointing_at_a_file_is_one_line(tiny_run, phantom_root, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(_evaluate_args(tiny_run / "best.pt", phantom_root, blocker)) == 2
    assert "a-file" in _one_line(capsys) and blocker.read_text() == "not a folder"
    assert main(_evaluate_args(tiny_run / "best.pt", phantom_root, blocker / "eval")) == 2
    assert "a-file" in _one_line(capsys)
