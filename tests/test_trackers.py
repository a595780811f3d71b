"""Experiment trackers (bench/run/trackers.py): `bench run --log-with tensorboard` writes the run's training scalars,
evaluation metrics and sample grids into an event file that TensorBoard's own reader reads back equal to the
run's files; bad tracker names are one-line errors, and a failing tracker never costs a result."""

import json
import subprocess
import sys
import time

import pytest

from bench.core.compute import Budget
from bench.core.errors import BenchError
from bench.run import trackers
from bench.run.config import SuiteConfig, apply_sets
from bench.run.runner import run_suite

SMALL = ["eval.points=2", "eval.max_prompts=2", "eval.samples_per_prompt=2", "eval.min_images=0", "method.batch_size=4"]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def small_suite():
    suite = SuiteConfig(methods=["rocm-kl"], rewards=["brightness"], seeds=[0], budget=Budget.parse("160nfe"))
    suite.model.name = "tiny"
    apply_sets(suite, SMALL)
    return suite


def test_tensorboard_event_file_holds_the_runs_scalars_metrics_and_grids(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "suite"
    sets = [a for s in SMALL for a in ("--set", s)]
    p = subprocess.run([sys.executable, "-m", "bench.cli.main", "run", "--model", "tiny", "--methods", "rocm-kl",
                        "--rewards", "brightness", "--budget", "300nfe", "--out", str(out), "--no-progress",
                        "--log-with", "tensorboard", *sets], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    run = out / "runs" / "rocm-kl__brightness__seed0"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    train = rows(run / "train.jsonl")
    assert len(train) == 3
    for key in ("loss", "reward_mean", "divergence", "nfe", "flops", "seconds", "budget_used"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train], key

    evals = rows(run / "eval.jsonl")
    points = sorted({(r["step"], r["fraction"]) for r in evals})  # (0, 0.0), (2, 0.5), (3, 1.0)
    assert len(points) == 3 and len({s for s, _ in points}) == 3
    for split in ("train", "test"):
        for metric in ("brightness", "colorfulness", "kl-to-base"):
            want = [(r["step"], pytest.approx(r["value"], rel=1e-6, abs=1e-9))
                    for r in sorted(evals, key=lambda r: r["step"]) if (r["split"], r["metric"]) == (split, metric)]
            assert [(e.step, e.value) for e in events.Scalars(f"eval/{split}/{metric}")] == want
        by_budget = events.Scalars(f"eval_vs_budget/{split}/brightness")
        assert [e.step for e in by_budget] == [round(r["budget_used"] * 1000) for r in evals
                                               if (r["split"], r["metric"]) == (split, "brightness")]
        grids = events.Images(f"samples/{split}")
        assert [g.step for g in grids] == [s for s, _ in points]
    grid = Image.open(run / "samples" / "frac1.00.png")  # the reported split's grid, the same picture
    assert (grids[-1].width, grids[-1].height) == grid.size
    assert "config/text_summary" in tags["tensors"]
    assert (run / "summary.json").exists()


def test_tracker_names_are_checked_before_anything_runs(tmp_path, monkeypatch):
    assert trackers.parse_log_with(None) == () and trackers.parse_log_with("none") == ()
    assert trackers.parse_log_with("tensorboard,tensorboard") == ("tensorboard",)
    with pytest.raises(BenchError, match="did you mean 'tensorboard'"):
        trackers.parse_log_with("tensorbord")
    monkeypatch.setattr(trackers, "find_spec", lambda module: None)
    with pytest.raises(BenchError, match="the wandb package is not installed; run: pip install wandb"):
        trackers.parse_log_with("wandb")
    p = subprocess.run([sys.executable, "-m", "bench.cli.main", "run", "--model", "tiny", "--log-with", "tensorbord",
                        "--out", str(tmp_path / "never")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "did you mean 'tensorboard'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


class FailsToOpen:
    free_steps = True

    def __init__(self, run_dir, config):
        raise RuntimeError("no such server")


class FailsOnImages:
    free_steps = True
    opened = closed = 0
    scalars_logged: list = []

    def __init__(self, run_dir, config):
        assert config["method"] == "rocm-kl"  # opened after config.json was written
        FailsOnImages.opened += 1

    def scalars(self, values, step):
        FailsOnImages.scalars_logged.append(step)

    def images(self, values, step):
        raise OSError("disk full")

    def flush(self):
        pass

    def close(self):
        FailsOnImages.closed += 1


def test_a_failing_tracker_never_costs_a_result(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(trackers.TRACKERS, "wandb", (FailsToOpen, "json", ""))
    monkeypatch.setitem(trackers.TRACKERS, "trackio", (FailsOnImages, "json", ""))
    (run,) = run_suite(small_suite(), tmp_path / "suite", show_progress=False, log_with=("wandb", "trackio"))
    assert (run / "summary.json").exists() and (run / "adapter.safetensors").exists()
    assert {r["fraction"] for r in rows(run / "eval.jsonl")} == {0.0, 0.5, 1.0}
    err = capsys.readouterr().err
    assert "warning: wandb tracker failed (RuntimeError: no such server)" in err
    assert "warning: trackio tracker failed (OSError: disk full)" in err
    # Dropped at its first failure (the base model's evaluation): no later value reached it, and it was not closed.
    assert FailsOnImages.opened == 1 and FailsOnImages.closed == 0 and FailsOnImages.scalars_logged == [0, 0]


def test_wandb_offline_run_in_the_run_folder(tmp_path, capsys):
    pytest.importorskip("wandb")  # not installed by `make install`: pip install wandb
    (run,) = run_suite(small_suite(), tmp_path / "suite", show_progress=False, log_with=("wandb",))
    assert "tracker failed" not in capsys.readouterr().err
    (offline,) = (run / "wandb").glob("offline-run-*")
    (log,) = offline.glob("*.wandb")
    for _ in range(100):  # wandb's service process may still be writing its log after finish() returns
        if b"eval/test/brightness" in log.read_bytes():
            break
        time.sleep(0.1)
    assert b"eval/test/brightness" in log.read_bytes() and b"train/loss" in log.read_bytes()
    assert list((offline / "files" / "media" / "images" / "samples").glob("test_*.png"))
