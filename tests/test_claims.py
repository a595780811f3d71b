"""bench claims (bench/analysis/claims.py): known values for the pure pieces, then the command on published suite folders."""

import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.analysis.claims import (
    ClaimsConfig,
    at_compute,
    c1_table,
    c4_curves,
    first_crossing,
    frontier_peaks,
    gap_curves,
    threshold,
    value_at,
    write_claims,
)
from bench.cli.main import app
from bench.core.errors import BenchError

ROOT = Path(__file__).resolve().parents[1]
FRONTIER = ROOT / "results" / "v2-frontier"


def test_first_crossing_interpolates_and_censors():
    assert first_crossing([0, 10, 20], [0.0, 1.0, 2.0], 1.5) == pytest.approx(15.0)
    assert first_crossing([0, 10, 20], [0.0, 1.0, 2.0], 1.0) == pytest.approx(10.0)  # reached exactly at a point
    assert first_crossing([0, 10, 20], [2.0, 1.0, 0.0], 1.0) == 0.0  # already there at the first point
    assert math.isnan(first_crossing([0, 10], [0.0, 0.5], 1.0))  # never reached
    assert first_crossing([0, 10, 20], [5.0, 3.0, 1.0], 2.0, higher=False) == pytest.approx(15.0)
    # the first crossing counts, not a later one after a dip
    assert first_crossing([0, 10, 20, 30], [0.0, 2.0, 0.0, 2.0], 1.0) == pytest.approx(5.0)


def test_threshold_raises_negative_bases_too():
    assert threshold(0.8, 0.5) == pytest.approx(1.2)
    assert threshold(-2.0, 0.5) == pytest.approx(-1.0)


def frame(curves: dict) -> pd.DataFrame:
    """Evaluation rows: curves[(method, seed, split, metric)] = [(fraction, nfe, value), ...]."""
    rows = []
    for (method, seed, split, metric), points in curves.items():
        for fraction, nfe, value in points:
            rows.append({"run_id": f"{method}__r__seed{seed}", "method": method, "reward": "r", "seed": seed,
                         "split": split, "metric": metric, "fraction": fraction, "nfe": nfe, "value": value})
    return pd.DataFrame(rows)


def test_c1_median_and_measured_range_over_reaching_seeds():
    ev = frame({("a", 0, "test", "g"): [(0, 0, 1.0), (0.5, 100, 1.2), (1, 200, 1.4)],
                ("a", 1, "test", "g"): [(0, 0, 1.0), (0.5, 100, 1.0), (1, 200, 1.2)],
                ("b", 0, "test", "g"): [(0, 0, 1.0), (0.5, 100, 1.01), (1, 200, 1.02)]})
    t = c1_table(ev, "g", "test", gain=0.1, xcol="nfe").set_index("method")
    assert t.loc["a", "threshold"] == pytest.approx(1.1)
    # seed 0 crosses at 50, seed 1 at 150: median 100, range 50-150 (both measured crossings), 2 of 2
    assert t.loc["a", "median"] == pytest.approx(100.0) and t.loc["a", "reached"] == 2 and t.loc["a", "runs"] == 2
    assert (t.loc["a", "min"], t.loc["a", "max"]) == pytest.approx((50.0, 150.0))
    assert math.isnan(t.loc["b", "median"]) and t.loc["b", "reached"] == 0  # never: drawn and tabled as such


def test_gap_is_train_minus_test_per_point():
    ev = frame({("a", 0, "train", "g"): [(0, 0, 1.0), (1, 200, 2.0)],
                ("a", 0, "test", "g"): [(0, 0, 1.0), (1, 200, 1.5)],
                ("a", 1, "train", "g"): [(0, 0, 1.0), (1, 200, 3.0)],
                ("a", 1, "test", "g"): [(0, 0, 1.0), (1, 200, 2.0)]})
    g = gap_curves(ev, "g", "test", "nfe").set_index("fraction")
    assert g.loc[0, "gap"] == pytest.approx(0.0)
    assert g.loc[1, "gap"] == pytest.approx(0.75) and g.loc[1, "n"] == 2


def test_frontier_peak_is_the_highest_mean_point():
    ev = frame({("a", 0, "test", "g"): [(0, 0, 1.0), (0.5, 100, 1.3), (1, 200, 0.9)],
                ("a", 0, "test", "kl-to-base"): [(0, 0, 0.0), (0.5, 100, 4.0), (1, 200, 9.0)]})
    p = frontier_peaks(ev, "g", "test", "nfe").iloc[0]
    assert p["peak_gain"] == pytest.approx(0.3) and p["peak_sqrt_kl"] == pytest.approx(2.0)
    assert p["peak_x"] == 100 and p["end_gain"] == pytest.approx(-0.1) and p["end_sqrt_kl"] == pytest.approx(3.0)


def test_c4_curves_by_learning_rate_and_own_setting():
    import json

    rows = [(1e-4, 1.0, 0.70, {"100": 0.69, "101": 0.71}), (1e-3, 1.0, 0.75, {"100": 0.74, "101": 0.76}),
            (1e-2, 1.0, float("-inf"), {}), (1e-4, 3.0, 0.72, {"100": 0.72, "101": 0.72}),
            (1e-3, 3.0, 0.71, {"100": 0.70, "101": 0.72}), (1e-2, 3.0, 0.73, {"100": 0.73, "101": 0.73}),
            (1e-3, 0.3, 0.60, {"100": 0.6, "101": 0.6})]
    trials = pd.DataFrame([{"method": "a", "reward": "r", "values": json.dumps({"lr": lr, "beta": b}), "score": s,
                            "score@1nfe": s, "seeds@1nfe": json.dumps(seeds)} for lr, b, s, seeds in rows])
    c = c4_curves(trials, "1nfe")
    assert len(c) == 6  # the stopped trial (-inf) is not a point of a curve
    centre = c[c["centre"]]
    assert set(centre["setting"]) == {"beta=1"} or set(centre["setting"]) == {"beta=3"}  # the most tried setting
    row = c[(c["lr"] == 1e-3) & (c["setting"] == "beta=1")].iloc[0]
    assert (row["score"], row["low"], row["high"]) == (0.75, 0.74, 0.76)


def test_at_compute_interpolates_each_run_to_the_target():
    ev = frame({("a", 0, "test", "g"): [(0, 0, 1.0), (0.5, 98, 1.2), (1, 200, 1.4)],
                ("a", 1, "test", "g"): [(0, 0, 1.0), (0.5, 102, 1.4), (1, 200, 1.6)],
                ("a", 2, "test", "g"): [(0, 0, 1.0), (1, 90, 1.9)]})  # ends short of 100 (beyond 5%): left out
    t = at_compute(ev, ["g"], "test", "nfe", 100).iloc[0]
    # seed 0: 1.2 + 2/102 * 0.2; seed 1: 1.0 + 100/102 * 0.4
    assert t["g"] == pytest.approx((1.2 + 0.2 * 2 / 102 + 1.0 + 0.4 * 100 / 102) / 2) and t["n"] == 2
    assert value_at([0, 96], [0.0, 2.0], 100) == 2.0  # a budget that ends 4% short: its last value
    assert math.isnan(value_at([0, 94], [0.0, 2.0], 100)) and math.isnan(value_at([10, 20], [0.0, 1.0], 5))


def test_claims_on_published_folders(tmp_path):
    files = write_claims([FRONTIER / "proxy-beta-3"], tmp_path, ClaimsConfig(budgets=(7500,)),
                         ceiling=[FRONTIER / "gold-none"])
    assert {f.name for f in files} == {"claims.md", "gain_vs_compute.png", "c1_compute.png", "c6_gap.png",
                                       "c6_frontier.png"}
    text = (tmp_path / "claims.md").read_text()
    assert "| rocm-kl | testbed-pref |" in text and "| rocm-none | testbed-gold |" in text
    # the published frontier's peak (results/README.md): +0.0192 gold at kl 1.26 for beta 3
    assert "0.01919" in text
    assert "## Every metric at 7500 nfe" in text
    assert "| base model's gap |" in text  # C6's gap beside what the base model already had


def test_claims_command_errors_in_one_line(tmp_path):
    r = CliRunner().invoke(app, ["claims", str(FRONTIER / "proxy-beta-3"), "--out", str(tmp_path), "--gold", "nope"])
    # bench.cli.main turns a BenchError into one line and exit 2 (tests/test_cli.py); here it must be one
    assert isinstance(r.exception, BenchError) and "was not evaluated" in str(r.exception)
    r = CliRunner().invoke(app, ["claims", str(FRONTIER / "proxy-beta-3"), str(FRONTIER / "proxy-beta-1"),
                                 "--out", str(tmp_path)])
    assert isinstance(r.exception, BenchError) and "two of the folders" in str(r.exception)
    r = CliRunner().invoke(app, ["claims", str(FRONTIER / "proxy-beta-3"), "--out", str(tmp_path),
                                 "--sweep", str(tmp_path)])
    assert isinstance(r.exception, BenchError) and "trials.csv" in str(r.exception)


def test_c4_from_the_published_sweep_alone(tmp_path):
    files = write_claims([], tmp_path, ClaimsConfig(), sweep=ROOT / "results" / "v2-sweep")
    assert [f.name for f in files] == ["claims.md", "c4_sensitivity.png"]
    text = (tmp_path / "claims.md").read_text()
    assert "| grpo | 4 |" in text  # every method had the same 4 trials (a v2 sweep: Optuna's, not the protocol)
    assert len([line for line in text.splitlines() if line.startswith("| ") and "| 4 |" in line]) == 14
    with pytest.raises(BenchError, match="give suite folders"):
        write_claims([], tmp_path, ClaimsConfig())


def test_unfinished_runs_are_left_out_with_a_note(tmp_path):
    import shutil
    suite = tmp_path / "suite"
    shutil.copytree(FRONTIER / "proxy-beta-3", suite, ignore=shutil.ignore_patterns("report", "samples"))
    (suite / "runs" / "rocm-kl__testbed-pref__seed2" / "summary.json").unlink()  # as if it were still running
    write_claims([suite], tmp_path / "claims", ClaimsConfig(budgets=(7500,)))
    text = (tmp_path / "claims" / "claims.md").read_text()
    assert "left out 1 unfinished run(s)" in text and "rocm-kl__testbed-pref__seed2" in text
    assert "| rocm-kl | testbed-pref | 0.7" in text and "| 2 | 2 |" in text  # C1 over the 2 finished seeds
    for d in (suite / "runs").iterdir():
        (d / "summary.json").unlink(missing_ok=True)
    with pytest.raises(BenchError, match="no finished run"):
        write_claims([suite], tmp_path / "claims", ClaimsConfig(budgets=(7500,)))
