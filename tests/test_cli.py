"""The command-line contract: verbs exist, the reference doc matches the parser, errors are one line."""

import subprocess
import sys
from pathlib import Path

import pytest

from prostate_vq.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
VERBS = {
    "synth",
    "manifest",
    "import",
    "presets",
    "summary",
    "train",
    "refit",
    "evaluate",
    "report",
    "sweep",
    "demo",
    "train-prior",
    "sample",
    "encode",
    "export",
}


def test_every_verb_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= VERBS


def test_cli_reference_is_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_cli_docs.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_reference_mentions_every_option_of_train():
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for option in (
        "--data",
        "--out",
        "--preset",
        "--task",
        "--epochs",
        "--max-minutes",
        "--spatial-size",
        "--batch-size",
        "--lr",
        "--seed",
        "--patience",
        "--mask-ratio",
        "--device",
        "--resume",
        "--set",
    ):
        assert option in doc


def test_python_dash_m_runs_the_same_program():
    result = subprocess.run([sys.executable, "-m", "prostate_vq", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("prostate-vq ")


def test_missing_data_folder_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main(["manifest", "--data", str(missing), "--check"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert str(missing) in err


def test_unknown_verb_is_an_argparse_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-verb"])
    assert exit_info.value.code == 2
