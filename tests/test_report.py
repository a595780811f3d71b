"""bench.report on a synthetic suite folder written with bench.results' own writers (no torch, no models)."""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.errors import BenchError
from bench.report import build_report, tex_escape
from bench.results import append_jsonl, run_id, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
METHODS = {"rocm-kl": {"beta": 0.1, "divergence": "kl"}, "ddpo": {}}
SEEDS = (0, 1)
FRACTIONS = (0.0, 0.5, 1.0)
BUDGET_NFE = 2000.0
INCOMPLETE = ("ddpo", 1)  # this run stopped after its evaluation at fraction 0.5 and has no summary.json


def brightness(method: str, seed: int, split: str, fraction: float) -> float:
    """Synthetic values: rocm-kl learns faster; held-out lags train (overfitting); seeds differ."""
    rate = 0.4 if method == "rocm-kl" else 0.2
    return 0.3 + rate * fraction * (1.0 if split == "train" else 0.7) + 0.013 * seed * fraction


def kl_to_base(method: str, seed: int, fraction: float) -> float:
    return (0.5 if method == "rocm-kl" else 1.5) * fraction + 0.01 * seed


def write_suite(root: Path) -> Path:
    """2 methods x 1 reward ("brightness") x 2 seeds, evaluated at fractions 0, 0.5, 1 on train and heldout."""
    write_json_atomic(root / "manifest.json", {
        "argv": ["bench", "run", "--methods", "rocm-kl,ddpo", "--rewards", "brightness"],
        "versions": {"python": "3.12", "torch": "2.5"}, "git": {"commit": "abc1234", "dirty": False},
        "device": "cpu", "budget": {"kind": "nfe", "amount": BUDGET_NFE, "text": "2000nfe"}})
    for method, method_config in METHODS.items():
        for seed in SEEDS:
            d = root / "runs" / run_id(method, "brightness", seed)
            write_json_atomic(d / "config.json", {
                "method": method, "reward": "brightness", "seed": seed, "method_config": method_config,
                "budget": {"kind": "nfe", "amount": BUDGET_NFE, "text": "2000nfe"}})
            done = (method, seed) != INCOMPLETE
            fractions = FRACTIONS if done else FRACTIONS[:2]
            for step, f in enumerate(fractions):
                common = {"step": step, "fraction": f, "nfe": BUDGET_NFE * f, "seconds": 10.0 * f,
                          "version": "1", "stderr": 0.01, "n": 8}
                rows = []
                for split in ("train", "heldout"):
                    rows.append({**common, "split": split, "metric": "brightness", "higher_is_better": True,
                                 "value": brightness(method, seed, split, f)})
                    rows.append({**common, "split": split, "metric": "kl-to-base", "higher_is_better": False,
                                 "value": kl_to_base(method, seed, f)})
                append_jsonl(d / "eval.jsonl", rows)
                (d / "samples").mkdir(exist_ok=True)
                level = int(40 + 200 * f)
                Image.new("RGB", (64, 32), (level, level // 2, 255 - level)).save(d / "samples" / f"frac{f:.2f}.png")
            last = fractions[-1]
            append_jsonl(d / "train.jsonl", [{"step": 1, "nfe": BUDGET_NFE * last, "seconds": 10.0 * last,
                                              "budget_used": last, "reward_mean": 0.5}])
            if done:
                write_json_atomic(d / "summary.json", {"nfe": BUDGET_NFE, "seconds": 10.0})
    return root


def read_table(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "table.csv") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list[Path]]:
    suite = write_suite(tmp_path_factory.mktemp("suite"))
    return suite, build_report(suite)


def test_writes_every_output(report):
    suite, written = report
    out = suite / "report"
    expected = {"table.md", "table.csv", "table.tex", "metric_brightness.png", "metric_kl-to-base.png",
                "overfitting.png", "reward_vs_divergence.png", "grid_ddpo__brightness.png",
                "grid_rocm-kl__brightness.png", "index.md"}
    assert {p.name for p in written} == expected
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left behind
    for p in written:
        if p.suffix == ".png":
            with Image.open(p) as im:
                assert im.size[0] > 300
    index = (out / "index.md").read_text()
    assert "bench run --methods rocm-kl,ddpo --rewards brightness" in index
    assert "![overfitting](overfitting.png)" in index and "(grid_ddpo__brightness.png)" in index
    assert "95% confidence" in index and "↑" in index
    tex = (out / "table.tex").read_text()
    assert r"\pm" in tex and r"$\uparrow$" in tex and r"\textbf{" in tex


def test_ci_matches_hand_computation(report):
    suite, _ = report
    row = read_table(suite / "report")["rocm-kl"]
    finals = [brightness("rocm-kl", s, "heldout", 1.0) for s in SEEDS]
    mean = sum(finals) / 2
    std = math.sqrt(sum((v - mean) ** 2 for v in finals) / (2 - 1))
    t_975_1dof = math.tan(math.pi * (0.975 - 0.5))  # Student t with 1 dof is the Cauchy distribution: 12.706
    assert float(row["brightness_mean"]) == pytest.approx(mean, rel=1e-12)
    assert float(row["brightness_ci95"]) == pytest.approx(t_975_1dof * std / math.sqrt(2), rel=1e-9)
    assert row["brightness_n"] == "2" and row["beta"] == "0.1" and row["budget"] == "2000nfe"
    assert float(row["compute_nfe_mean"]) == BUDGET_NFE
    md = (suite / "report" / "table.md").read_text()
    assert f"**{mean:.3f} ± " in md  # rocm-kl has the best brightness: bold
    assert md.splitlines()[0].startswith("| method | reward | beta | budget | seeds | status | brightness ↑ |")


def test_incomplete_run_is_marked_and_counts_where_it_stopped(report):
    suite, _ = report
    table = read_table(suite / "report")
    assert table["rocm-kl"]["status"] == "complete"
    assert table["ddpo"]["status"].startswith("incomplete")
    assert table["ddpo"]["beta"] == ""
    finals = [brightness("ddpo", 0, "heldout", 1.0), brightness("ddpo", 1, "heldout", 0.5)]
    assert float(table["ddpo"]["brightness_mean"]) == pytest.approx(sum(finals) / 2)
    assert float(table["ddpo"]["compute_nfe_mean"]) == pytest.approx((BUDGET_NFE + BUDGET_NFE / 2) / 2)
    md = (suite / "report" / "table.md").read_text()
    assert "| ddpo | brightness | – | 2000nfe | 2 | incomplete" in md


def test_imports_no_torch(tmp_path):
    suite = write_suite(tmp_path)
    code = ("import sys; from pathlib import Path; from bench.report import build_report; "
            f"build_report(Path({str(suite)!r})); assert 'torch' not in sys.modules, 'torch was imported'")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_corrupt_config_is_a_bench_error(tmp_path):
    suite = write_suite(tmp_path)
    (suite / "runs" / run_id("ddpo", "brightness", 0) / "config.json").write_text('{"method": "ddpo", "rew')
    with pytest.raises(BenchError, match="corrupt results file .*config.json") as e:
        build_report(suite)
    assert "\n" not in str(e.value)


def test_torn_last_eval_line_is_tolerated(tmp_path, report):
    suite = write_suite(tmp_path)
    with open(suite / "runs" / run_id("rocm-kl", "brightness", 0) / "eval.jsonl", "a") as f:
        f.write('{"step": 3, "fraction": 1.0, "split": "heldout", "metric": "bright')
    build_report(suite)
    assert read_table(suite / "report") == read_table(report[0] / "report")


def test_empty_or_unevaluated_suite_is_a_bench_error(tmp_path):
    with pytest.raises(BenchError, match="no runs folder"):
        build_report(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(BenchError, match="no runs in"):
        build_report(tmp_path)
    write_json_atomic(tmp_path / "runs" / "a__b__seed0" / "config.json", {"method": "a", "reward": "b", "seed": 0})
    with pytest.raises(BenchError, match="no evaluation rows"):
        build_report(tmp_path)


def test_interrupted_attempts_ignored_and_missing_samples_noted(tmp_path):
    suite = write_suite(tmp_path)
    junk = suite / "runs" / (run_id("ddpo", "brightness", 1) + ".interrupted-1")
    junk.mkdir()
    (junk / "config.json").write_text("not json")
    shutil.rmtree(suite / "runs" / run_id("ddpo", "brightness", 0) / "samples")
    out = tmp_path / "elsewhere"
    written = build_report(suite, out)
    assert all(p.parent == out for p in written)
    index = (out / "index.md").read_text()
    assert "no sample grids in `runs/ddpo__brightness__seed0/samples`" in index
    assert not (out / "grid_ddpo__brightness.png").exists()  # the grid shows the first seed only
    assert (out / "grid_rocm-kl__brightness.png").exists()


def test_tex_escape():
    assert tex_escape("a_b 5% & #1 ± –") == r"a\_b 5\% \& \#1 $\pm$ --"


def test_mean_ci_text_has_decimals_the_ci_needs_and_no_more():
    from bench.report import _pm

    assert _pm(65.7, 1.7) == "65.7 ± 1.7"
    assert _pm(0.236, 0.004) == "0.236 ± 0.004"
    assert _pm(0.5, 1e-9) == "0.500 ± 0.000"  # seeds agreeing up to float noise: not 0.500000 ± 0.000000
    assert _pm(3.0, float("nan")) == "3.00"  # one seed: no CI
    assert _pm(float("nan"), 0.1) == "–"
