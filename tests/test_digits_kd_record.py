"""benchmarks/digits_kd.py's committed record and the table made from it (no training)."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
T_2 = 4.303  # t(0.975, 2 degrees of freedom), from a t-table: 3 seeds


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # digits_kd imports run_records and paired_stats from beside it
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def digits_kd():
    return _load("digits_kd")


@pytest.fixture(autouse=True)
def records(tmp_path, monkeypatch, digits_kd):
    """benchmarks/records redirected: a test's record must not land in the repository's."""
    folder = tmp_path / "records"
    monkeypatch.setattr(digits_kd.run_records, "RECORDS", folder)
    return folder


# test top-1 per seed 0, 1, 2; val top-1 is test + 0.01 throughout
TEST_TOP1 = {"teacher": [0.99, 0.98, 0.99], "alone": [0.95, 0.96, 0.97], "kd_store": [0.96, 0.98, 0.99],
             "kd_live": [0.96, 0.98, 0.99], "few_alone": [0.90, 0.92, 0.91], "few_kd": [0.93, 0.91, 0.92]}


def _record() -> dict:
    seeds = {str(s): {"rows": {key: {"test_top1": top1[s], "val_top1": top1[s] + 0.01, "epoch_seconds_median": 0.2}
                               for key, top1 in TEST_TOP1.items()},
                      "timing": {"alone": 0.30, "kd_store": 0.31, "kd_live": 0.36}} for s in range(3)}
    args = {"batch_size": 64, "per_class": 10, "teacher": "cnn", "teacher_epochs": 30, "student": "mlp_small",
            "epochs": 100, "lr0": 1e-3, "workers": 0, "temperature": 4.0, "alpha": 0.9, "few_epochs": 200,
            "timing_epochs": 25}
    profile = {"items": 1077, "batches": 17, "item_us": {"plain": 200.0, "store (row index)": 201.0},
               "step_ms": {"ce": 0.2, "kd": 0.5, "gather": 0.01}}
    return {"command": "python benchmarks/digits_kd.py --out runs/digits_kd", "commit": "abc1234",
            "machine": "a test CPU", "recorded_on": "2026-12-08", "minutes": 11.04, "args": args,
            "counts": {"train": 1077, "val": 360, "test": 360, "few": 100, "unlabeled": 977}, "seeds": seeds,
            "profile": profile}


def _by_hand(taught: list[float], alone: list[float]) -> str:
    """Mean paired difference ± t(2) sd / sqrt(3), in points, as the table writes it."""
    diffs = [100 * (t - a) for t, a in zip(taught, alone)]
    mean, half = statistics.mean(diffs), T_2 * statistics.stdev(diffs) / math.sqrt(3)
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def _rows(table: str) -> dict[str, list[str]]:
    return {line.split(" | ")[0].lstrip("| "): [c.strip(" |") for c in line.split(" | ")[1:]]
            for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")}


def test_the_table_pairs_the_kd_gains_by_seed_with_their_t_intervals(digits_kd):
    rows = _rows(digits_kd.report_table(_record()))
    # diffs 1, 2, 2 points: mean 1.67, sd 0.577, half-width 4.303 * 0.577 / sqrt(3) = 1.43: [+0.23, +3.10]
    live = rows["student KD (live teacher) - student alone"]
    assert live == ["3", _by_hand(TEST_TOP1["kd_live"], TEST_TOP1["alone"]), "shown"]
    assert live[1] == "+1.67 [+0.23, +3.10]"
    # diffs 3, -1, 1 points: mean 1, sd 2, half-width 4.97: [-3.97, +5.97] holds 0
    few = rows["few-label + unlabeled KD - few-label student alone"]
    assert few == ["3", _by_hand(TEST_TOP1["few_kd"], TEST_TOP1["few_alone"]), "not shown"]
    assert few[1] == "+1.00 [-3.97, +5.97]"


def test_the_table_reports_test_top1_with_val_beside_it(digits_kd):
    table = digits_kd.report_table(_record())
    rows = _rows(table)
    assert list(rows)[0] == "model" and rows["model"][:3] == ["seeds", "test top-1 % (mean ± sd)",
                                                              "val top-1 % (mean ± sd)"]
    assert rows["student alone"] == ["3", "96.00 ± 1.00", "97.00 ± 1.00", "95.00", "96.00", "97.00"]
    assert set(digits_kd.ROWS) <= set(rows)
    assert "commit abc1234" in table and "a test CPU" in table and "360 images" in table


def test_the_record_is_written_whole_and_read_back(digits_kd, records):
    record = _record()
    path = digits_kd.write_record(record)
    assert path == records / "digits_kd.json" and json.loads(path.read_text()) == record
    assert list(records.iterdir()) == [path]  # no temporary file left beside it
    assert digits_kd.read_record() == record


def test_a_missing_record_names_the_command_that_writes_it(digits_kd, records, tmp_path):
    with pytest.raises(SystemExit, match="python benchmarks/digits_kd.py --out runs/digits_kd"):
        digits_kd.read_record()
    report = _load("report")
    with pytest.raises(SystemExit, match="digits_kd.py"):
        report.TABLES["digits_kd"](tmp_path / "empty")
    digits_kd.write_record(_record())
    assert report.TABLES["digits_kd"](records) == digits_kd.report_table(_record())


def test_a_seed_keeps_medians_and_the_full_report_renders(digits_kd):
    runs = {key: {"test_top1": 0.9, "val_top1": 0.91, "epoch_seconds": [0.3, 0.1, 0.2], "wall_s": 5.0}
            for key in digits_kd.ROWS.values()}
    runs["timing"] = {"alone": [0.2, 0.4, 0.3], "kd_store": [0.3, 0.3, 0.5], "kd_live": [0.4, 0.6, 0.5]}
    entry = digits_kd.seed_entry(runs)
    assert entry["rows"]["alone"] == {"test_top1": 0.9, "val_top1": 0.91, "epoch_seconds_median": 0.2}
    assert entry["timing"] == {"alone": 0.3, "kd_store": 0.3, "kd_live": 0.5}
    text = digits_kd.report(_record())
    assert digits_kd.report_table(_record()) in text
    assert "| 0 | 0.300 | 0.310 | 0.360 | 0.968 | 0.833 |" in text  # plain / store 0.30 / 0.31, / live 0.30 / 0.36
    assert "2 steps each; the KD run takes 17 an epoch" in text  # 100 and 1,077 images in batches of 64
