"""benchmarks/gpu_check.sh, the prepared GPU check: on a machine without a CUDA GPU it says so in one line and exits
1; its report records each stage, and a stage whose input failed is skipped with the reason (the GPU figures
themselves are measured where a GPU is lent, never in the suite)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the check would run")
def test_without_a_gpu_one_line_and_exit_1(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no usable CUDA GPU here: "), proc.stderr
    assert "torch.cuda.is_available() is False" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing measured, nothing written


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_records_failures_and_skips_what_depends_on_them(tmp_path):
    gc = _gpu_check_module()
    report = gc.Report(tmp_path, budget_s=600)
    report.write({"gpu": "none (test)"})

    def broken():
        raise RuntimeError("no engine\nsecond line")

    assert report.stage("train", lambda: {"teacher": "t.pt"})["status"] == "ok"
    assert report.stage("engines", broken, needs=("train",))["status"] == "failed"
    skipped = report.stage("val", lambda: {"never": 1}, needs=("engines",))
    assert skipped["status"] == "skipped" and "engines" in skipped["why"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [s["status"] for s in saved["stages"]] == ["ok", "failed", "skipped"]
    assert saved["stages"][1]["why"] == "RuntimeError: no engine"  # the first line of the error only
    md = (tmp_path / "report.md").read_text()
    assert "## engines: failed" in md and "- teacher: t.pt" in md and "- gpu: none (test)" in md


def test_a_spent_budget_skips_the_remaining_stages(tmp_path):
    gc = _gpu_check_module()
    report = gc.Report(tmp_path, budget_s=0)
    entry = report.stage("speed", lambda: {"never": 1})
    assert entry["status"] == "skipped" and "budget" in entry["why"]
