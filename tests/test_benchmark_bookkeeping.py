"""The benchmarks' bookkeeping (no training): kd_gain's run order, the baselines its report divides by, a run the
plan would train twice (the yolov5s alone of plan `converged` is its teacher's run), unlabeled_gain's rows, and
output_parts' box IoU."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from yolodistill.quickstart import Plan


def _load(name: str):
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)  # unlabeled_gain imports kd_gain
    try:
        spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(folder)


@pytest.fixture(scope="module")
def kd_gain():
    return _load("kd_gain")


@pytest.fixture(autouse=True)
def records(tmp_path, monkeypatch, kd_gain):
    """benchmarks/records redirected: a test's runs must not land in the repository's records."""
    folder = tmp_path / "records"
    monkeypatch.setattr(kd_gain.run_records, "RECORDS", folder)
    return folder


def test_a_run_comes_after_its_teacher_start_and_baseline(kd_gain):
    assert kd_gain.with_dependencies(["output"]) == ["teacher yolov5s", "yolov5n alone", "output"]
    order = kd_gain.with_dependencies(["fine-tuned, output"])
    assert set(order) == {"teacher yolov5s", "yolov5n alone", "fine-tuned teacher yolov5s",
                          "fine-tuned yolov5n alone", "fine-tuned, output"}
    for label in order:
        run = kd_gain.RUNS[label]
        for need in (run.teacher, run.init, kd_gain.baseline(label)):
            assert need is None or order.index(need) < order.index(label), (need, label)


def test_every_taught_run_has_a_baseline_trained_alike(kd_gain):
    for label, run in kd_gain.RUNS.items():
        base = kd_gain.baseline(label)
        if run.teacher is None:
            assert base is None
            continue
        alone = kd_gain.RUNS[base]
        assert alone.teacher is None and (alone.model, alone.init, alone.target, alone.epochs) == (
            run.model, run.init, run.target, run.epochs), label


def test_a_run_trained_exactly_like_a_finished_one_is_not_trained_again(kd_gain):
    converged = Plan.named("converged")
    assert converged.teacher_epochs == converged.student_epochs
    done = {"teacher yolov5s": {"map": 0.5}}
    assert kd_gain.same_training("yolov5s alone", done, converged) == "teacher yolov5s"
    assert kd_gain.same_training("yolov5n alone", done, converged) is None
    # the teacher trained longer than the students: two different runs
    assert kd_gain.same_training("yolov5s alone", done, replace(converged, student_epochs=30)) is None
    # a copy is never the original another run is matched to
    done["yolov5s alone"] = {"map": 0.5, "same_as": "teacher yolov5s"}
    assert kd_gain.same_training("teacher yolov5s", {"yolov5s alone": done["yolov5s alone"]}, converged) is None


def test_a_fine_tuning_set_is_as_hard_as_the_data_its_models_were_trained_on(kd_gain):
    for plan, finetune in {"benchmark": "finetune", **kd_gain.FINETUNE_PLANS}.items():
        source, target = Plan.named(plan), Plan.named(finetune)
        assert target.difficulty == source.difficulty and target.style != source.style, (plan, finetune)


def test_the_epoch_a_taught_run_reaches_its_baselines_best(kd_gain):
    assert kd_gain.first_epoch_at([0.1, 0.3, 0.5, 0.4], 0.45) == 3
    assert kd_gain.first_epoch_at([0.1, 0.3, 0.5], 0.5) == 3  # reaching it counts
    assert kd_gain.first_epoch_at([0.1, 0.3], 0.5) is None


def test_every_unlabeled_gain_row_is_a_valid_training():
    from yolodistill.detection.train_options import TrainOptions

    unlabeled_gain = _load("unlabeled_gain")
    plan = Plan.named("benchmark")
    for label, (unlabeled, kind, more) in unlabeled_gain.ROWS.items():
        fields = {**unlabeled_gain.options(kind, plan, 0.25), **more}
        TrainOptions(data="d.yaml", **fields)  # a misspelt field fails here, not an hour into a benchmark
        assert unlabeled in (None, "unseen", "rest", "textured"), label
        assert (unlabeled == "rest") == ("training images" in label), label  # the old protocol says so
        assert ("pseudo_labels" in fields) == ("pseudo" in label), label
    pseudo = unlabeled_gain.options("pseudo", plan, 0.25)
    assert pseudo["pseudo_labels"] == 0.25 and pseudo["d_weight"] == 0.0  # the teacher's boxes, no soft terms
    assert set(unlabeled_gain.SCREENS) < set(unlabeled_gain.ROWS)


def test_unlabeled_gain_reports_the_share_of_the_way_per_seed():
    unlabeled_gain = _load("unlabeled_gain")
    run = lambda m, minutes=10.0: {"map": m, "minutes": minutes}  # noqa: E731
    reference = {"0": {"teacher yolov5s": run(0.6), "yolov5n alone": run(0.4), "output, mse_ciou": run(0.46)},
                 "1": {"teacher yolov5s": run(0.6), "yolov5n alone": run(0.5), "output, mse_ciou": run(0.5)}}
    soft, pseudo = "+ unseen unlabeled, soft", "+ unseen unlabeled, pseudo-labels"
    results = {"0": {"10% labels alone": run(0.2), soft: run(0.35, 30.0), pseudo: run(0.30)},
               "1": {"10% labels alone": run(0.3), soft: run(0.45, 40.0), pseudo: run(0.44)}}
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
            for line in unlabeled_gain.report(results, reference, [0, 1], "# t").splitlines() if line.startswith("| ")}
    # the way from the 10%-label student to the 100%-label one: 0.2 -> 0.4 and 0.3 -> 0.5, gains 0.15 and 0.15
    assert rows[soft][3] == "+15.0 ± 0.0" and rows[soft][4] == "75% (per seed: 75%, 75%)"
    assert rows[soft][5].rstrip(" |") == "35.0"  # the mean training minutes
    distilled = rows["100% labels, distilled: outputs, mse_ciou (kd_gain)"]
    assert distilled[4] == "115% (per seed: 130%, 100%)"  # (0.46-0.2)/0.2 and (0.5-0.3)/0.2
    # pseudo-labels against soft, seed by seed: -5 and -1 points, mean -3, sd 2.83: the 95% interval
    # -3 ± t(1) 2.83 / sqrt(2) = -3 ± 12.706 * 2 = [-28.4, +22.4] holds 0
    assert rows[f"{pseudo} - {soft}"][1:] == ["2", "-3.0 [-28.4, +22.4]", "not shown |"]
    assert rows["10% labels alone"][3] == ""  # the base row has no gain over itself


def test_a_gain_pays_only_when_its_95_percent_interval_is_above_zero(kd_gain):
    assert kd_gain.gain_pays([0.03]) == "-"  # one seed: no interval
    # mean 0.03, sd 0.01, n 3: half-width t(2) 0.01 / sqrt(3) = 4.303 * 0.00577 = 0.0248: [0.005, 0.055]
    assert kd_gain.gain_pays([0.02, 0.03, 0.04]) == "yes"
    assert kd_gain.gain_pays([0.00, 0.03, 0.06]) == "no"  # sd 0.03: [-0.045, 0.105]
    assert kd_gain.gain_pays([-0.04, -0.03, -0.02]) == "no"  # a clear loss is not a gain


def test_paired_interval_by_hand():
    paired_stats = _load("paired_stats")
    interval = paired_stats.paired_interval([0.02, 0.03, 0.04])
    half = 4.302652729911275 * 0.01 / 3 ** 0.5  # t(0.975, 2) from a t-table, sd 0.01
    assert interval.n == 3 and interval.mean == pytest.approx(0.03)
    assert (interval.low, interval.high) == (pytest.approx(0.03 - half), pytest.approx(0.03 + half))
    assert interval.verdict == "shown" and interval.describe() == "+3.0 [+0.5, +5.5]"
    assert paired_stats.paired_interval([0.00, 0.03, 0.06]).verdict == "not shown"  # [-4.5, +10.5] holds 0
    assert paired_stats.paired_interval([-0.04, -0.03, -0.02]).verdict == "shown"  # a loss is shown too
    one = paired_stats.paired_interval([0.012])
    assert one.verdict == "one seed" and one.describe() == "+1.2"
    # 5 seeds: t(0.975, 4) = 2.776; differences 1..5 points: mean 3, sd 1.58, half-width 1.96
    five = paired_stats.paired_interval([0.01, 0.02, 0.03, 0.04, 0.05])
    assert five.describe() == "+3.0 [+1.0, +5.0]"


def test_pairs_of_runs_from_different_machines_are_refused(kd_gain):
    maps = {"a": {0: 0.50, 1: 0.52, 2: 0.51}, "b": {0: 0.48, 1: 0.50, 2: 0.40}}
    machines = {"a": {0: "vm1", 1: "vm1", 2: "vm2"}, "b": {0: "vm1", 1: "vm1", 2: "vm3"}}

    def per_seed(label, key="map"):
        return maps[label] if key == "map" else machines[label]

    (row,) = kd_gain.paired_differences(per_seed, [("a", "b")])[2:]
    # seed 2's pair (vm2 against vm3) is left out: the differences are seeds 0 and 1's, +2.0 each
    assert row.startswith("| a - b | 2 | +2.0 [+2.0, +2.0] | shown (1 seed left out: its runs trained on different")


def test_the_report_compares_each_taught_run_with_its_baseline_seed_by_seed(kd_gain, tmp_path):
    maps = {"teacher yolov5s": [0.60, 0.62], "yolov5n alone": [0.40, 0.44], "output": [0.50, 0.53]}
    results = {}
    for seed in (0, 1):
        for label, per_seed in maps.items():
            run_dir = tmp_path / f"{seed}_{label}"
            run_dir.mkdir()
            # the curve of each run rises to its best in the last of 4 epochs
            curve = [per_seed[seed] * f for f in (0.25, 0.5, 0.9, 1.0)]
            (run_dir / "results.csv").write_text(
                "epoch,metrics/mAP_0.5:0.95\n" + "".join(f"{i},{m}\n" for i, m in enumerate(curve)))
            results.setdefault(str(seed), {})[label] = {"map": per_seed[seed], "save_dir": str(run_dir)}
    text = kd_gain.report(results, [0, 1], "# test", Plan.named("converged"))
    row = next(line for line in text.splitlines() if line.startswith("| output |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # gains 0.10 and 0.09: mean 9.5 points, sd 0.71, 95% interval 9.5 ± 12.706 * 0.5 = [+3.1, +15.9], so it pays;
    # shares 0.10/0.20 and 0.09/0.18: 50% each
    assert cells[1] == "2" and cells[3] == "+9.5 [+3.1, +15.9]" and cells[4] == "yes"
    assert cells[5] == "50% (per seed: 50%, 50%)"
    # the student alone's best (0.40; 0.44) is first reached at epoch 3: 0.9 x 0.50 = 0.45 and 0.9 x 0.53 = 0.477
    # reach it, 0.5 x 0.50 and 0.5 x 0.53 do not
    assert cells[6] == "3/4, 3/4"
    assert "| output - " not in text  # one taught run per (teacher, baseline): no paired difference


def test_the_report_sets_a_larger_teachers_run_beside_the_same_setting_from_the_smaller(kd_gain):
    assert kd_gain.teacher_pairs() == [("yolov5m -> yolov5n", "output, mse_ciou")]
    maps = {"teacher yolov5s": 0.56, "teacher yolov5m": 0.60, "yolov5n alone": 0.47, "output, mse_ciou": 0.51,
            "yolov5m -> yolov5n": 0.52}
    results = {"2": {label: {"map": m, "curve": [m]} for label, m in maps.items()}}
    text = kd_gain.report(results, [2], "# test", Plan.named("converged"))
    # one seed: the difference, and no interval to weigh it with
    assert "| yolov5m -> yolov5n - output, mse_ciou | 1 | +1.0 | one seed |" in text
    row = next(line for line in text.splitlines() if line.startswith("| yolov5m -> yolov5n |"))
    assert "38% (per seed: 38%)" in row  # (0.52 - 0.47) / (0.60 - 0.47): the share of its own teacher's lead


def test_output_parts_iou_by_hand():
    import torch

    output_parts = _load("output_parts")
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.5, 0.0, 1.5, 1.0], [0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 3.0, 3.0]])
    # half-overlapping unit squares: 0.5 / 1.5; the same box; disjoint boxes
    assert output_parts.elementwise_iou(a, b).tolist() == pytest.approx([1 / 3, 1.0, 0.0])


def test_output_parts_table_has_as_many_cells_in_every_line():
    output_parts = _load("output_parts")
    parts = {form: [0.1, 0.2, 0.3] for form in output_parts.FORMS}
    lines = output_parts.table({"alone": {**parts, "iou": 0.5, "cells": 3}}).splitlines()
    assert len(lines) == 3 and len({line.count("|") for line in lines}) == 1


def test_a_folder_stamped_before_a_plan_field_existed_still_resumes(kd_gain, tmp_path):
    import json

    plan = Plan.named("converged")
    stamp = tmp_path / "plan.json"
    old = {k: v for k, v in vars(plan).items() if k not in ("seed", "output_loss")}
    stamp.write_text(json.dumps(old))  # written before Plan had output_loss: its runs used the default, mse
    assert kd_gain._stamp(stamp, plan)["output_loss"] == "mse"
    with pytest.raises(SystemExit, match="another plan"):
        kd_gain._stamp(stamp, replace(plan, output_loss="kl"))
    with pytest.raises(SystemExit, match="another plan"):
        kd_gain._stamp(stamp, replace(plan, n_train=10))


def test_taught_rows_use_the_plans_output_loss_unless_they_name_one(kd_gain):
    plan = replace(Plan.named("converged"), output_loss="kl")
    assert kd_gain.distill_options(kd_gain.RUNS["output"], plan)["output_loss"] == "kl"
    assert kd_gain.distill_options(kd_gain.RUNS["output + pkd"], plan)["output_loss"] == "kl"
    assert kd_gain.distill_options(kd_gain.RUNS["output, mse_ciou"], plan)["output_loss"] == "mse_ciou"


def test_unlabeled_gain_report_only_trains_nothing(tmp_path, monkeypatch):
    import json
    import sys

    unlabeled_gain = _load("unlabeled_gain")

    def no_training(*args, **kwargs):
        raise AssertionError("--report-only trained")

    monkeypatch.setattr(unlabeled_gain, "run_all", no_training)
    monkeypatch.setattr(unlabeled_gain.kd_gain, "run_all", no_training)
    monkeypatch.setattr(unlabeled_gain, "plot_curves", lambda *args: None)  # reads the runs' results.csv
    run = {"map": 0.3, "minutes": 10.0}
    (tmp_path / "kd").mkdir()
    (tmp_path / "kd" / "results.json").write_text(json.dumps({"0": {"teacher yolov5s": run, "yolov5n alone": run}}))
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "results.json").write_text(json.dumps({"0": {"10% labels alone": run}}))
    monkeypatch.setattr(sys, "argv", ["unlabeled_gain.py", "--report-only", "--seeds", "0", "--out",
                                      str(tmp_path / "u"), "--kd-gain", str(tmp_path / "kd")])
    unlabeled_gain.main()
    assert "| 10% labels alone | 1 | 0.300 |" in (tmp_path / "u" / "report.md").read_text()


def _finished_run(folder: Path, maps: list[float]) -> dict:
    """A run folder with a results.csv of these val mAP50-95 per epoch, as the benchmarks store a run."""
    from yolodistill.run_logger import RunLogger

    folder.mkdir(parents=True)
    log = RunLogger(folder, ["metrics/mAP_0.5:0.95"], tensorboard=False)
    for epoch, m in enumerate(maps):
        log.log(epoch, {"metrics/mAP_0.5:0.95": m})
    return {"map": max(maps), "minutes": 1.0, "kind": "yolov5n alone", "save_dir": str(folder)}


def test_a_record_keeps_the_runs_figures_and_curves_after_runs_is_gone(kd_gain, records, tmp_path):
    import json
    import shutil

    out = tmp_path / "runs" / "kd_conv"
    out.mkdir(parents=True)
    kd_gain._stamp(out / "plan.json", Plan.named("converged"))
    results = {"0": {"yolov5n alone": _finished_run(out / "seed0" / "alone", [0.1, 0.25, 0.5])}}
    kd_gain._save(out / "results.json", results)  # every save mirrors into the record

    record = json.loads((records / "kd_conv.json").read_text())
    kept = record["runs"]["0"]["yolov5n alone"]
    assert kept["curve"] == [0.1, 0.25, 0.5] and kept["map"] == 0.5 and "save_dir" not in kept

    shutil.rmtree(tmp_path / "runs")  # a fresh checkout: the record alone
    out.mkdir(parents=True)
    kd_gain._stamp(out / "plan.json", Plan.named("converged"))
    shown = kd_gain.run_records.merged(out, {"1": {"yolov5n alone": {"map": 0.4, "minutes": 1.0}}})
    assert shown["0"]["yolov5n alone"]["recorded"] and shown["0"]["yolov5n alone"]["map"] == 0.5
    assert kd_gain._val_maps(shown["0"]["yolov5n alone"]) == [0.1, 0.25, 0.5]
    assert not shown["1"]["yolov5n alone"].get("recorded")  # OUT's own run, not the record's
    note = "\n".join(kd_gain.run_records.recorded_note(shown, [0, 1], out))
    assert "seed 0: yolov5n alone" in note and "seed 1" not in note

    # a save of this checkout's seed 1 keeps seed 0 in the record, and a rerun of seed 0 replaces it
    kd_gain._save(out / "results.json", {"1": {"yolov5n alone": _finished_run(out / "seed1" / "a", [0.2, 0.4])}})
    runs = json.loads((records / "kd_conv.json").read_text())["runs"]
    assert runs["0"]["yolov5n alone"]["curve"] == [0.1, 0.25, 0.5] and runs["1"]["yolov5n alone"]["map"] == 0.4


def test_a_record_of_another_plan_is_left_out(kd_gain, records, tmp_path):
    out = tmp_path / "kd_conv"
    out.mkdir()
    kd_gain._stamp(out / "plan.json", Plan.named("converged"))
    kd_gain._save(out / "results.json", {"0": {"yolov5n alone": _finished_run(out / "a", [0.3])}})
    (out / "plan.json").unlink()
    kd_gain._stamp(out / "plan.json", replace(Plan.named("converged"), n_train=7))
    assert kd_gain.run_records.merged(out, {}) == {}


def test_unlabeled_gain_reports_recorded_runs_and_names_them(tmp_path, monkeypatch, records):
    import json
    import sys

    unlabeled_gain = _load("unlabeled_gain")
    monkeypatch.setattr(unlabeled_gain, "plot_curves", lambda *args: None)
    plan = {k: v for k, v in vars(replace(Plan.named("converged"), output_loss="mse_ciou",
                                           feature_weight=0.0)).items() if k != "seed"}
    kd_plan = {k: v for k, v in vars(Plan.named("converged")).items() if k != "seed"}
    run = {"map": 0.3, "minutes": 10.0, "curve": [0.3]}
    records.mkdir()
    (records / "kd.json").write_text(json.dumps({"plan": kd_plan, "runs": {"0": {"teacher yolov5s": run,
                                                                                 "yolov5n alone": run}}}))
    (records / "u.json").write_text(json.dumps({"plan": plan, "runs": {"0": {"10% labels alone": run}}}))
    monkeypatch.setattr(sys, "argv", ["unlabeled_gain.py", "--report-only", "--seeds", "0", "--out",
                                      str(tmp_path / "u"), "--kd-gain", str(tmp_path / "kd")])
    unlabeled_gain.main()
    text = (tmp_path / "u" / "report.md").read_text()
    assert "| 10% labels alone | 1 | 0.300 |" in text and "| 100% labels alone (kd_gain) | 1 | 0.300 |" in text
    assert "seed 0: 10% labels alone" in text and "seed 0: teacher yolov5s, yolov5n alone" in text


def test_a_finished_run_keeps_the_machine_that_trained_it_and_the_record_too(kd_gain, records, tmp_path):
    import json

    import torch

    stamp = kd_gain.run_records.machine()
    assert f"{torch.get_num_threads()} threads" in stamp and torch.__version__ in stamp
    out = tmp_path / "kd_conv"
    out.mkdir()
    kd_gain._stamp(out / "plan.json", Plan.named("converged"))
    r = {"metrics/mAP_0.5:0.95": 0.4, "metrics/mAP_0.5": 0.6, "save_dir": str(out / "a")}
    entry = kd_gain.run_records.finished(r, 0.0, "yolov5n alone")
    assert (entry["map"], entry["mAP50"], entry["kind"], entry["machine"]) == (0.4, 0.6, "yolov5n alone", stamp)
    kd_gain._save(out / "results.json", {"0": {"yolov5n alone": entry}})
    assert json.loads((records / "kd_conv.json").read_text())["runs"]["0"]["yolov5n alone"]["machine"] == stamp
    # an entry of OUT from before runs were stamped keeps the machine the record has for it
    kd_gain._save(out / "results.json", {"0": {"yolov5n alone": {k: v for k, v in entry.items() if k != "machine"}}})
    assert json.loads((records / "kd_conv.json").read_text())["runs"]["0"]["yolov5n alone"]["machine"] == stamp


def test_a_report_names_the_machines_only_when_its_runs_came_from_more_than_one(kd_gain):
    note = kd_gain.run_records.machines_note
    here = {"map": 0.4, "machine": "cpu A"}
    assert note({"0": {"teacher yolov5s": here, "yolov5n alone": here}}, [0]) == []
    mixed = {"0": {"teacher yolov5s": here, "yolov5n alone": {"map": 0.4}},
             "2": {"teacher yolov5s": {"map": 0.5, "machine": "cpu B"}, "yolov5n alone": here}}
    text = "\n".join(note(mixed, [0, 2]))
    assert "- cpu A: seed 0: teacher yolov5s; seed 2: yolov5n alone" in text
    assert "- cpu B: seed 2: teacher yolov5s" in text
    assert f"- {kd_gain.run_records.UNSTAMPED}: seed 0: yolov5n alone" in text
    assert note(mixed, [1]) == []  # a seed the report does not show


# ---- benchmarks/report.py: the tables are their records' ----------------------------------------------------------

def test_committed_tables_are_what_the_committed_records_give():
    report = _load("report")
    assert report.main(["--check"]) == 0


def test_the_report_covers_the_readme_results_and_every_docs_page():
    """A marked table moved to a new docs/ page stays checked without the page being listed anywhere."""
    report = _load("report")
    pages = {p.relative_to(report.ROOT).as_posix() for p in report.DOCUMENTS}
    docs = {p.relative_to(report.ROOT).as_posix() for p in (report.ROOT / "docs").glob("*.md")}
    assert docs and docs <= pages
    assert {"README.md", "benchmarks/RESULTS.md"} <= pages


def test_a_table_edited_by_hand_fails_the_check_and_is_rewritten(tmp_path, capsys):
    report = _load("report")
    doc = tmp_path / "doc.md"
    made = report.render("<!-- report: parity_noise -->\n<!-- /report: parity_noise -->\n", report.ROOT /
                         "benchmarks" / "records")
    assert "424/424 refused" in made  # the record's figure, through parity_noise.report
    doc.write_text("# results\n\n" + made.replace("424/424 refused", "424/424 rejected") + "\nafter\n")
    assert report.main(["--check", "--documents", str(doc)]) == 1
    assert "tables differ from their records" in capsys.readouterr().err
    assert report.main(["--documents", str(doc)]) == 0  # rewrites the table, keeps the text around it
    assert doc.read_text() == "# results\n\n" + made + "\nafter\n"
    assert report.main(["--check", "--documents", str(doc)]) == 0


def test_an_unknown_table_name_is_refused(tmp_path):
    report = _load("report")
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- report: nowhere -->\n<!-- /report: nowhere -->\n")
    with pytest.raises(SystemExit, match="unknown report table 'nowhere'"):
        report.main(["--check", "--documents", str(doc)])


def test_reports_score_on_the_test_split_when_every_run_has_one(kd_gain):
    val = {"teacher yolov5s": 0.60, "yolov5n alone": 0.40, "output": 0.50}
    test = {"teacher yolov5s": 0.55, "yolov5n alone": 0.35, "output": 0.40}
    results = {"0": {label: {"map": val[label], "test_map": test[label], "curve": [val[label]]} for label in val}}
    text = kd_gain.report(results, [0], "# t", Plan.named("converged"))
    row = next(line for line in text.splitlines() if line.startswith("| output |"))
    # the test figures: 0.40 - 0.35 = +5.0 points, (0.40 - 0.35) / (0.55 - 0.35) = 25% of the lead
    assert "| test mAP50-95 (mean ± sd) |" in text and "| 0.400 | +5.0 |" in row and "25% (per seed: 25%)" in row
    del results["0"]["output"]["test_map"]  # one run without a test score: every figure is val's
    text = kd_gain.report(results, [0], "# t", Plan.named("converged"))
    assert "| val mAP50-95 (mean ± sd) |" in text and "50% (per seed: 50%)" in text


def test_a_finished_run_is_scored_on_the_test_split(teacher_weights, tiny_data, tmp_path):
    import shutil
    import time

    import yaml

    run_records = _load("run_records")
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    shutil.copy(teacher_weights, run / "weights" / "best.pt")
    data = tmp_path / "data.yaml"
    spec = yaml.safe_load(tiny_data.read_text())
    data.write_text(yaml.safe_dump({**spec, "test": "images/val"}))  # the tiny set's val images as its test split
    r = {"metrics/mAP_0.5:0.95": 0.1, "metrics/mAP_0.5": 0.2, "save_dir": str(run)}
    plan = replace(Plan.named("fast"), imgsz=64)
    entry = run_records.finished(r, time.time(), "t", data=data, plan=plan)
    assert entry["map"] == 0.1 and 0 <= entry["test_map"] <= entry["test_mAP50"] <= 1
    assert "test_map" not in run_records.finished(r, time.time(), "t", data=tiny_data, plan=plan)  # no test split


# ---- benchmarks/site_gain.py: the user's case -----------------------------------------------------------------------

def test_site_gain_data_copies_the_labels_and_keeps_the_pool_apart(tmp_path):
    site_gain = _load("site_gain")
    plan = replace(Plan.named("site"), n_train=2, n_val=1, n_test=1, n_unlabeled=3, imgsz=64, seed=5)
    data, pool = site_gain.site_data(tmp_path, plan)
    import yaml

    spec = yaml.safe_load(data.read_text())
    labeled = sorted((data.parent / "images").iterdir())
    assert len(labeled) == 2 * site_gain.REPEAT and len(list((data.parent / "labels").iterdir())) == len(labeled)
    assert Path(spec["val"]).is_dir() and Path(spec["test"]).is_dir() and spec["nc"] == 6
    assert len(list(pool.iterdir())) == 3 and not (pool.parent.parent / "labels" / "unlabeled").exists()
    # the site comes from its own seed: a second call reuses it, another seed makes another
    stamp = (tmp_path / "site" / ".complete").read_text()
    assert site_gain.site_data(tmp_path, plan) == (data, pool) and f" {5 + site_gain.SITE_SEED} " in stamp


def test_site_gain_rows_distil_as_named():
    site_gain = _load("site_gain")
    plan = Plan.named("site")
    opts = {k: site_gain.distill_options(site_gain.ROWS[k], plan, 0.3) for k in site_gain.TAUGHT}
    assert opts[site_gain.LABELS] == plan.distill_options() and "pseudo_labels" not in opts[site_gain.SOFT]
    assert opts["+ unlabeled, pseudo-labels"] == {"d_output": True, "d_weight": 0.0, "pseudo_labels": 0.3}
    assert opts["+ unlabeled, soft terms + pseudo-labels"] == {**plan.distill_options(), "pseudo_labels": 0.3}
    assert [k for k in site_gain.ROWS if site_gain.ROWS[k].unlabeled] == site_gain.TAUGHT[1:]


def test_site_gain_report_pairs_by_seed_and_says_when_a_gain_is_not_shown():
    site_gain = _load("site_gain")
    figures = {  # seed -> row -> test mAP; the soft row gains 5, 6, 4 points (shown), the labels row -1, +1, 0
        0: {site_gain.TEACHER: 0.60, site_gain.ALONE: 0.40, site_gain.LABELS: 0.39, site_gain.SOFT: 0.45},
        1: {site_gain.TEACHER: 0.62, site_gain.ALONE: 0.42, site_gain.LABELS: 0.43, site_gain.SOFT: 0.48},
        2: {site_gain.TEACHER: 0.58, site_gain.ALONE: 0.38, site_gain.LABELS: 0.38, site_gain.SOFT: 0.42}}
    results = {str(s): {k: {"test_map": m, "map": m + 0.01, "minutes": 1.0, "machine": "m"} for k, m in rows.items()}
               for s, rows in figures.items()}
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in
            site_gain.report(results, [0, 1, 2], "# t").splitlines() if line.startswith("| ")}
    soft, labels = rows[site_gain.SOFT], rows[site_gain.LABELS]
    # +5.0 mean; sd 1.0, t(2) = 4.303: half-width 2.48
    assert soft[4] == "+5.0 [+2.5, +7.5]" and soft[5] == "yes" and soft[6].startswith("25% (per seed: 25%, 30%, 20%)")
    assert labels[4] == "+0.0 [-2.5, +2.5]" and labels[5] == "no"
    assert rows[f"{site_gain.SOFT} - {site_gain.LABELS}"][3].rstrip(" |") == "shown"
    # a seed whose baseline trained on another machine does not pair
    results["2"][site_gain.ALONE]["machine"] = "other"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in
            site_gain.report(results, [0, 1, 2], "# t").splitlines() if line.startswith("| ")}
    assert rows[site_gain.SOFT][4] == "+5.5 [-0.9, +11.9]" and rows[site_gain.SOFT][5] == "no"


def test_unlabeled_gain_pool_is_new_images_of_the_plans_data(tmp_path):
    import filecmp

    from yolodistill.synth import generate

    unlabeled_gain = _load("unlabeled_gain")
    plan = replace(Plan.named("converged"), imgsz=64, seed=4)
    pool = unlabeled_gain.unseen_pool(tmp_path, 3, plan)
    # the images `data synth --n-unlabeled` writes beside the plan's splits, none of them a training image
    full = generate(tmp_path / "full", n_train=2, n_val=1, n_test=0, n_unlabeled=3, imgsz=64, seed=4,
                    difficulty=plan.difficulty, progress=False).parent
    assert sorted(p.name for p in pool.iterdir()) == sorted(p.name for p in (full / "images" / "unlabeled").iterdir())
    assert all(filecmp.cmp(p, full / "images" / "unlabeled" / p.name, shallow=False) for p in pool.iterdir())
    train = {p.read_bytes() for p in (full / "images" / "train").iterdir()}
    assert not train & {p.read_bytes() for p in pool.iterdir()}


# ---- benchmarks/overhead.py and deploy_speed.py: their records and tables ----------------------------------------

def _overhead_run(day: str, student: float, ratio: float, **more) -> dict:
    """A run as overhead.py records it (medians in s/step)."""
    return {"command": "python benchmarks/overhead.py", "commit": "abc1234", "machine": "cpu A, 2 threads",
            "device": None, "recorded_on": day, "reference_step_ms": 95.4, "steps": 20, "warmup": 3,
            "median_s": {"student": student, "teacher": 0.0702, "distill": 0.1783, "unlabeled": 0.1604},
            "ratios": {"distill/(student+teacher)": ratio, "unlabeled/labeled": 0.8996}, **more}


def test_overhead_record_keeps_every_run_of_a_setting(records):
    import json

    overhead = _load("overhead")
    a, b = "yolov5n.yaml <- yolov5s.yaml random 160px b16 mse_ciou/mse cpu", "yolov5n.yaml <- x.pt 320px b8 kl/mse cpu"
    path = overhead.write_record(a, _overhead_run("2026-12-06", 0.0951, 1.0786))
    assert path == records / "overhead.json"  # run_records.RECORDS, read at call time
    overhead.write_record(b, _overhead_run("2026-12-07", 0.2, 1.05))
    overhead.write_record(a, _overhead_run("2026-12-07", 0.0962, 1.0811))
    record = json.loads(path.read_text())  # valid JSON, nothing left beside it
    assert [r["recorded_on"] for r in record[a]] == ["2026-12-06", "2026-12-07"] and len(record[b]) == 1
    assert sorted(p.name for p in records.iterdir()) == ["overhead.json"]
    assert overhead.read_record() == record


def test_overhead_report_shows_each_run_with_its_machine_and_reference_step():
    overhead = _load("overhead")
    setting = "yolov5n.yaml <- yolov5s.yaml random 160px b16 mse_ciou/mse cpu"
    gpu = _overhead_run("2026-12-07", 0.0951, 1.0786, machine="cpu B", device="NVIDIA H100, AMP steps, FP16 teacher",
                        reference_step_ms=None)
    lines = overhead.report({setting: [_overhead_run("2026-12-06", 0.0951, 1.0786), gpu]}).splitlines()
    assert len(lines) == 4 and len({line.count("|") for line in lines}) == 1
    assert lines[2] == (f"| {setting} | 2026-12-06, abc1234 | cpu A, 2 threads | 95 | 0.095 | 0.070 | 0.178 | 1.079 | 0.900 |")
    assert lines[3].startswith(f"| {setting} | 2026-12-07, abc1234 | cpu B; NVIDIA H100, AMP steps, FP16 teacher | - | 0.095 |")


def test_overhead_setting_names_what_was_timed():
    import argparse

    overhead = _load("overhead")
    args = argparse.Namespace(student="yolov5n.yaml", teacher="yolov5s.yaml", teacher_weights=None, imgsz=160,
                              batch_size=16, output_loss="mse_ciou", feature_loss="mse", device="cpu")
    assert overhead.setting_label(args) == "yolov5n.yaml <- yolov5s.yaml random 160px b16 mse_ciou/mse cpu"
    weights = overhead.ROOT / "runs" / "kd_gain" / "seed0" / "teacher" / "weights" / "best.pt"
    args.teacher_weights, args.device = str(weights), "0"
    # a file inside the repository by its path there, one outside by its name: no machine's folders in a record
    assert overhead.setting_label(args) == ("yolov5n.yaml <- runs/kd_gain/seed0/teacher/weights/best.pt 160px b16 "
                                            "mse_ciou/mse cuda:0")
    assert overhead.file_name("/somewhere/else/teacher.pt") == "teacher.pt"


def test_a_missing_record_names_the_command_that_makes_it(records):
    overhead, deploy_speed = _load("overhead"), _load("deploy_speed")
    with pytest.raises(SystemExit, match=r"overhead.json: run python benchmarks/overhead.py \(") as e:
        overhead.read_record()
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="--record mine"):
        overhead.read_record(name="mine")
    with pytest.raises(SystemExit, match="run python benchmarks/deploy_speed.py --teacher T.pt --student S.pt") as e:
        deploy_speed.read_record()
    assert "\n" not in str(e.value)


def _deploy_run(day: str) -> dict:
    """A run as deploy_speed.py records it: per setting, per repeat."""
    return {"command": "python benchmarks/deploy_speed.py --teacher t.pt --student s.pt --repeats 2",
            "commit": "abc1234", "machine": "cpu A, 2 threads", "device": "onnxruntime 1.32.0, CPU",
            "recorded_on": day, "reference_step_ms": 95.4, "teacher": "t.pt", "student": "s.pt", "imgsz": [128, 128],
            "repeats": 2, "runs": 500,
            "settings": {"batch 1, 1 thread": [{"speed_x": 3.0, "gflops_x": 4.0, "teacher_ms": 4.0, "student_ms": 1.3},
                                               {"speed_x": 3.4, "gflops_x": 4.0, "teacher_ms": 4.4, "student_ms": 1.2}],
                         "batch 8, default threads": [{"speed_x": None, "gflops_x": None, "teacher_ms": 9.0,
                                                       "student_ms": 3.0}]}}


def test_deploy_speed_record_keeps_every_run_and_reports_mean_and_sd(records):
    import json

    deploy_speed = _load("deploy_speed")
    deploy_speed.write_record(_deploy_run("2026-12-06"))
    path = deploy_speed.write_record(_deploy_run("2026-12-07"))
    assert path == records / "deploy_speed.json"
    record = json.loads(path.read_text())
    assert [r["recorded_on"] for r in record] == ["2026-12-06", "2026-12-07"]
    text = deploy_speed.report(record)
    assert text.count("| setting |") == 2  # a table per run
    assert text.startswith("2026-12-06, cpu A, 2 threads (reference step 95 ms), onnxruntime 1.32.0, CPU: "
                           "teacher t.pt, student s.pt, 128x128 px, 2 repeats\n")
    # medians 4.2 and 1.25 ms; speed-ups 3.0 and 3.4: 3.20 ± 0.28; shares 75% and 85%: 80 ± 7%
    assert "| batch 1, 1 thread | 4.20 | 1.25 | 3.20 ± 0.28 | 4.00 | 80 ± 7% |" in text
    assert "| batch 8, default threads | 9.00 | 3.00 | - | - | - |" in text  # a ratio benchmark could not form


def test_deploy_speed_refuses_a_missing_file_in_one_line(tmp_path, monkeypatch, records):
    import sys

    deploy_speed = _load("deploy_speed")
    student = tmp_path / "s.pt"
    student.write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["deploy_speed.py", "--teacher", str(tmp_path / "t.pt"), "--student",
                                      str(student)])
    with pytest.raises(SystemExit, match=r"^--teacher .*t\.pt: no such file$"):
        deploy_speed.main()
    assert not records.exists()  # nothing measured, nothing recorded


def test_report_makes_the_overhead_and_deploy_speed_tables_from_their_records(records):
    overhead, deploy_speed, report = _load("overhead"), _load("deploy_speed"), _load("report")
    doc = "".join(f"<!-- report: {n} -->\n<!-- /report: {n} -->\n" for n in ("overhead", "deploy_speed"))
    with pytest.raises(SystemExit, match="run python benchmarks/overhead.py"):
        report.render(doc, records)
    overhead.write_record("a setting", _overhead_run("2026-12-07", 0.0951, 1.0786))
    deploy_speed.write_record(_deploy_run("2026-12-07"))
    made = report.render(doc, records)
    assert "| a setting | 2026-12-07, abc1234 | cpu A, 2 threads | 95 | 0.095 |" in made
    assert "| batch 1, 1 thread | 4.20 | 1.25 | 3.20 ± 0.28 | 4.00 | 80 ± 7% |" in made


def test_deploy_speed_records_a_run_without_machine_paths(tmp_path, monkeypatch, records):
    import json
    import sys
    import types

    deploy_speed = _load("deploy_speed")
    teacher, student = tmp_path / "t.pt", tmp_path / "s.pt"
    teacher.write_bytes(b"")
    student.write_bytes(b"")

    def fake_benchmark(weights, *, batch_size, project, name, **kwargs):  # teacher 4 ms, student 1 ms, 4.2x GFLOPs
        (Path(project) / name).mkdir(parents=True, exist_ok=True)  # as benchmark() makes its folder
        return {"ratios": [{"speed_x": 4.0, "throughput_x": 3.0, "GFLOPs_x": 4.2}], "meta": {"imgsz": [128, 128]},
                "results": [{"latency_ms_median": 4.0 * batch_size}, {"latency_ms_median": 1.0 * batch_size}]}

    monkeypatch.setattr(deploy_speed, "benchmark", fake_benchmark)
    monkeypatch.setitem(sys.modules, "quickstart_seeds", types.SimpleNamespace(reference_step_ms=lambda: 95.44))
    monkeypatch.setattr(sys, "argv", ["benchmarks/deploy_speed.py", "--teacher", str(teacher), "--student",
                                      str(student), "--repeats", "2", "--out", str(tmp_path / "out")])
    deploy_speed.main()
    (run,) = json.loads((records / "deploy_speed.json").read_text())
    assert (run["teacher"], run["student"], run["imgsz"]) == ("t.pt", "s.pt", [128, 128])  # no tmp folders
    assert run["reference_step_ms"] == 95.4
    assert run["command"].startswith("python benchmarks/deploy_speed.py --teacher ")
    assert run["settings"]["batch 8, default threads"] == [{"speed_x": 3.0, "gflops_x": 4.2, "teacher_ms": 32.0,
                                                            "student_ms": 8.0}] * 2
    monkeypatch.setattr(sys, "argv", sys.argv + ["--no-record"])
    deploy_speed.main()
    assert len(json.loads((records / "deploy_speed.json").read_text())) == 1


def test_site_gain_reuses_the_quickstarts_models_only_when_they_are_the_plans(tmp_path, teacher_weights, monkeypatch):
    import shutil

    import yaml

    site_gain = _load("site_gain")
    plan = replace(Plan.named("default"), seed=3)
    qs = tmp_path / "qs" / "seed3"
    for run in ("teacher", "student"):
        (qs / run / "weights").mkdir(parents=True)
        shutil.copy(teacher_weights, qs / run / "weights" / "best.pt")
        (qs / run / "results.csv").write_text("epoch\n0\n")
    (qs / "teacher" / "plan.txt").write_text(f"{plan.teacher_cfg} {plan.teacher_epochs} {plan.imgsz} {plan.n_train} 3 "
                                             f"{plan.optimizer} {plan.hyp} {plan.difficulty} {plan.nbs}\n")
    opt = {"seed": 3, "epochs": plan.student_epochs, "cfg": plan.student_cfg, "imgsz": plan.imgsz, "weights": "",
           "t_weights": ""}
    (qs / "student" / "opt.yaml").write_text(yaml.safe_dump(opt))
    trained = []
    monkeypatch.setattr(site_gain.quickstart, "prepare_teacher", lambda *a, **k: trained.append("teacher"))
    monkeypatch.setattr(site_gain.quickstart, "train_or_resume", lambda *a, **k: trained.append("student"))
    monkeypatch.setattr(site_gain.quickstart, "prepare_data", lambda out, plan: out / "data.yaml")

    where = site_gain.pretrained(tmp_path / "a", 3, tmp_path / "qs")
    assert trained == [] and where["teacher"][1] == str(qs / "teacher") and where["student"][1] == str(qs / "student")
    assert (where["student"][0] / "weights" / "best.pt").read_bytes() == teacher_weights.read_bytes()
    # a student of other epochs (or distilled) and a teacher of another plan are not the pretraining: trained here
    (qs / "student" / "opt.yaml").write_text(yaml.safe_dump({**opt, "epochs": 7}))
    (qs / "teacher" / "plan.txt").write_text("yolov5s.yaml 7\n")
    site_gain.pretrained(tmp_path / "b", 3, tmp_path / "qs")
    assert trained == ["teacher", "student"]


def test_qat_int8_report_pairs_the_files_by_seed_on_test():
    qat_int8 = _load("qat_int8")
    row = lambda f, p, q, c: {v: {"mAP50-95": m + 0.01, "test mAP50-95": m}  # noqa: E731
                              for v, m in zip(("fp32", "ptq", "qat", "ft32"), (f, p, q, c))}
    record = {"recorded_on": "2026-12-07", "machine": "m", "commit": "abc", "source": "quickstart_seeds", "epochs": 5,
              "seeds": {"seed0": row(0.60, 0.59, 0.605, 0.61), "seed1": row(0.50, 0.49, 0.50, 0.51),
                        "seed2": row(0.40, 0.39, 0.395, 0.41)}}
    text = qat_int8.report(record)
    assert "test mAP50-95 of each ONNX file" in text and "| seed0 | 0.600 | 0.590 | 0.605 | 0.610 |" in text
    # ptq - fp32: -1 point on every seed, sd 0: the interval is the point; qat - fp32: +0.5, 0, -0.5: holds 0
    assert "| ptq - fp32 | 3 | -1.0 [-1.0, -1.0] | shown |" in text
    assert "| qat - fp32 | 3 | +0.0 [-1.2, +1.2] | not shown |" in text


def test_quickstart_seeds_pairs_the_students_by_seed_and_leaves_out_a_seed_without_the_fourth():
    quickstart_seeds = _load("quickstart_seeds")

    def seed(maps: list[float]) -> dict:
        names = ["teacher", "alone", "distilled", "unlabeled"][:len(maps)]
        return {"models": {n: {"test mAP50-95": m, "val mAP50-95": m} for n, m in zip(names, maps)},
                "reference_step_ms": 116.0, "minutes": 20.0}

    # distilled - alone: +10, +12, +8 points (sd 2, t(2) = 4.303: half-width 4.97); + unlabeled - distilled on
    # seeds 1 and 2 only: +5, +3 (sd 1.414, t(1) = 12.706: half-width 12.7, holds 0)
    record = {"0": seed([0.60, 0.30, 0.40]), "1": seed([0.62, 0.32, 0.44, 0.49]), "2": seed([0.58, 0.28, 0.36, 0.39])}
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in
            quickstart_seeds.paired_table(record).splitlines()[2:]}
    assert rows["distilled - alone"][1:] == ["3", "+10.0 [+5.0, +15.0]", "shown |"]
    assert rows["distilled + unlabeled - distilled"][1:] == ["2", "+4.0 [-8.7, +16.7]", "not shown |"]
    assert rows["distilled + unlabeled - alone"][1] == "2"
    assert quickstart_seeds.paired_table(record) in quickstart_seeds.report(record)
