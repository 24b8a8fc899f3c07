"""tools/gpu_check.sh --dry-run: the prepared GPU check runs every step on the CPU at tiny sizes, so the script a
short GPU window depends on cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~30-65 s: every step of tools/gpu_check.sh in subprocesses
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text(encoding="utf-8"))
    assert results["dry_run"] is True and results["environment"]["torch"]
    steps = {s["name"]: s for s in results["steps"]}
    assert list(steps) == ["cuda_tests", "demo", "bf16_vs_fp32", "torchrun", "benchmark", "early_stop"]
    assert all(s["status"] in ("ok", "skipped") for s in steps.values()), steps
    assert steps["cuda_tests"]["status"] == "skipped"  # no CUDA here: the cuda-marked tests skip
    assert set(steps["bf16_vs_fp32"]) >= {"default", "fsq", "v3-ema", "tolerance"}
    assert steps["torchrun"]["sample_rc"] == 0 and steps["early_stop"]["steps"] == 6
    assert "gpu_check: 6 steps, 0 failed" in proc.stdout
