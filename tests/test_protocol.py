"""The protocol (docs/protocol.md), checked on what the real runner writes: every evaluation row covers every prompt
of its split with enough images, the splits are disjoint, validation is evaluated only when asked for, and the
protocol version is recorded."""

import json

import pytest

from bench.core.compute import Budget
from bench.prompts.sets import PROMPT_SETS, SPLITS
from bench.run.config import SuiteConfig, apply_sets, eval_prompts, images_per_prompt, split_prompts
from bench.run.runner import PROTOCOL, run_suite


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(PROMPT_SETS))
def test_prompt_splits_are_disjoint_and_complete(name):
    splits = {s: PROMPT_SETS[name][s] for s in SPLITS}
    assert all(splits.values())
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not set(splits[a]) & set(splits[b]), (name, a, b)


def test_evenly_spread_subset_and_image_counts():
    prompts = [f"p{i}" for i in range(90)]
    assert eval_prompts(prompts, 0) == prompts
    sub = eval_prompts(prompts, 10)
    assert len(sub) == 10 and sub[0] == "p0" and sub[-1] == "p89" and len(set(sub)) == 10
    suite = SuiteConfig(methods=["rocm-kl"], rewards=["brightness"], seeds=[0], budget=Budget.parse("10nfe"))
    assert images_per_prompt(90, suite.eval) == 2 and images_per_prompt(10, suite.eval) == 13  # >= 128 in all


@pytest.mark.parametrize("splits", ["train,test", "train,validation"])
def test_every_eval_row_covers_every_prompt_of_its_split(tmp_path, splits):
    suite = SuiteConfig(methods=["rocm-kl"], rewards=["brightness"], seeds=[0], budget=Budget.parse("60nfe"))
    apply_sets(suite, ["eval.points=1", "method.batch_size=2", f"eval.splits={splits}"])
    (run,) = run_suite(suite, tmp_path / "suite", show_progress=False)
    expected = split_prompts(suite)
    rows = rows_of(run)
    assert {r["split"] for r in rows} == set(splits.split(","))
    for r in rows:
        assert r["n_prompts"] == len(expected[r["split"]]), r
        assert r["n_images"] >= max(128, 2 * r["n_prompts"]) and r["n"] == r["n_images"], r
    config = json.loads((run / "config.json").read_text())
    manifest = json.loads((tmp_path / "suite" / "manifest.json").read_text())
    assert config["protocol"] == manifest["protocol"] == PROTOCOL == 3
    assert config["prompts"] == expected
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reported_split"] == splits.split(",")[-1]
