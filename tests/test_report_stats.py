"""Every interval and comparison of `bench report` is recomputed here from the per-image scores the real runner
stored (bench/results/scores.py): a 2-method x 2-seed tiny suite, its table.csv's means and half-widths against
bench/analysis/stats.py on the stacked arrays, and comparisons.md's verdict against the same paired, Holm-corrected
test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.analysis.report import build_report
from bench.analysis.stats import estimate, pairwise
from bench.core.compute import Budget
from bench.core.policy import ModelConfig
from bench.results.scores import read_scores
from bench.run.config import SuiteConfig, apply_sets
from bench.run.runner import run_suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "suite"
    s = SuiteConfig(methods=["rocm-kl", "rocm-none"], rewards=["brightness"], seeds=[0, 1],
                    budget=Budget.parse("300nfe"), model=ModelConfig(name="tiny"))
    apply_sets(s, ["eval.points=1", "eval.max_prompts=3", "eval.samples_per_prompt=3", "eval.min_images=0",
                   "method.batch_size=4"])
    run_suite(s, out, show_progress=False)
    build_report(out)
    return out


def arrays(out, method: str, metric: str) -> np.ndarray:
    """x[seed, prompt, image] of a method's last evaluation, from the stored scores."""
    runs = sorted((out / "runs").glob(f"{method}__brightness__seed*"))
    return np.stack([read_scores(r)[-1]["scores"]["test"][metric] for r in runs])


def test_table_intervals_are_recomputed_from_the_stored_scores(suite):
    table = pd.read_csv(suite / "report" / "table.csv").set_index("method")
    for method in ("rocm-kl", "rocm-none"):
        for metric in ("brightness", "colorfulness", "kl-to-base"):
            x = arrays(suite, method, metric)
            assert x.shape == (2, 3, 3)
            e = estimate(x)  # the same seed for the resampling: the same Monte Carlo draws as the report's
            assert table.loc[method, f"{metric}_mean"] == pytest.approx(e.mean, rel=1e-12)
            assert table.loc[method, f"{metric}_ci95"] == pytest.approx(e.half_width, rel=1e-9)
            assert table.loc[method, f"{metric}_ci_over"] == "seeds, prompts, images"
    assert table.loc["base model", "brightness_mean"] == pytest.approx(
        np.mean([read_scores(r)[0]["scores"]["test"]["brightness"] for r in (suite / "runs").iterdir()]))


def test_comparisons_are_recomputed_from_the_stored_scores(suite):
    text = (suite / "report" / "comparisons.md").read_text()
    hacked = pd.read_csv(suite / "report" / "table.csv").set_index("method")["hacked"].fillna("")
    for metric in ("brightness", "colorfulness"):
        (c,) = pairwise({f"{m}@brightness": arrays(suite, m, metric) for m in ("rocm-kl", "rocm-none")})
        section = text.split(f"## {metric} ")[1].split("## ")[0]
        assert f"{c.a} |" in section and f"{c.b} |" in section
        loser = (c.b if c.diff > 0 else c.a) if c.significant else None
        winner = (c.a if c.diff > 0 else c.b) if c.significant else None
        # the row recorded as significantly better than the other is the one this test finds
        row = next(line for line in section.splitlines() if line.startswith(f"| {winner or c.a} |"))
        assert row.endswith(f"| {loser} |") if loser else row.endswith("| — |")
        clean = [m for m in ("rocm-kl", "rocm-none") if not hacked[m]]
        best = winner if winner and len(clean) == 2 else None  # a lone unhacked row beats nobody: no best
        assert f"flagged hacked: {best or 'none (a tie)'}." in section
