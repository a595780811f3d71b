"""`bench sweep` and `bench run --from-sweep` through the real command line on the tiny model: a sweep killed
mid-trial resumes to exactly the requested trials, selection uses validation prompts and sweep seeds only, the
final run reproduces the selected values on the test prompts, and bad input gives one line and exit 2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.core.errors import BenchError
from bench.core.method import Knob
from bench.sweep.outputs import best_trial
from bench.sweep.protocol import grid_points, run_score, selection_metric

BENCH = [sys.executable, "-m", "bench.cli.main"]

TINY = ["--model", "tiny", "--budget", "200nfe", "--no-progress",
        "--set", "eval.points=1", "--set", "eval.max_prompts=2", "--set", "eval.samples_per_prompt=2",
        "--set", "eval.min_images=0", "--set", "rocm.batch_size=4", "--set", "ddpo.train_batch_size=4",
        "--set", "ddpo.prompts_per_step=2", "--set", "ddpo.samples_per_prompt=2"]  # a knob fixed by --set
SWEEP = ["sweep", "--methods", "rocm-kl,ddpo", "--sampler", "tpe", "--trials", "2", *TINY]


def bench(*args, check=True):
    p = subprocess.run([*BENCH, *args], capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"},
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def one_line_error(p, match):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    err = p.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert match in err, err


def eval_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


def studies(out: Path) -> dict[str, list]:
    import optuna

    url = f"sqlite:///{out / 'optuna.db'}"
    return {name: optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
            for name in optuna.get_all_study_names(url)}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep SIGKILLed during the second seed of its first trial, then run again with the same command."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    args = [*SWEEP, "--out", str(out)]
    proc = subprocess.Popen([*BENCH, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ | {"HF_HUB_OFFLINE": "1"}, start_new_session=True)
    runs = out / "trials" / "rocm-kl__brightness" / "trial-0" / "runs"
    deadline = time.time() + 300
    while not (runs / "rocm-kl__brightness__seed101" / "train.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline, "sweep ended before it could be interrupted"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first_seed = (runs / "rocm-kl__brightness__seed100" / "eval.jsonl").read_bytes()
    p = bench(*args)
    return out, p, first_seed


def test_selection_metric_is_never_the_training_reward():
    assert selection_metric("tiny", "brightness") == "colorfulness"  # the model's declared one
    assert selection_metric("tiny", "colorfulness") == "brightness"  # declared = trained: first other default
    assert selection_metric("testbed", "testbed-pref") == "testbed-pref-b"  # a second proxy: gold stays unseen
    assert selection_metric("testbed", "testbed-gold") == "testbed-pref-b"
    assert selection_metric("testbed", "testbed-pref-b") == "testbed-align"  # declared = trained: first other
    assert selection_metric("testbed", "z(testbed-pref-b)+testbed-pref") == "testbed-align"  # nor a term


def test_grid_is_seeded_and_large_enough():
    knobs = {"lr": Knob(1e-4, 1e-2, log=True), "k": Knob(choices=(2, 4))}
    grid = grid_points(knobs, 8, seed=3)
    assert grid == grid_points(knobs, 8, seed=3) and grid != grid_points(knobs, 8, seed=4)
    assert len(grid) >= 8 and len({tuple(sorted(p.items())) for p in grid}) == len(grid)
    assert all(1e-4 <= p["lr"] <= 1e-2 and p["k"] in (2, 4) for p in grid)
    with pytest.raises(BenchError, match="fewer than --trials"):
        grid_points({"k": Knob(choices=(2, 4))}, 3, seed=0)


def test_score_is_the_validation_metric_at_the_last_point(tmp_path):
    rows = [{"split": s, "metric": m, "fraction": f, "value": v, "higher_is_better": True}
            for s, m, f, v in [("validation", "colorfulness", 0.0, 1.0), ("validation", "colorfulness", 1.0, 2.0),
                               ("test", "colorfulness", 1.0, 9.0), ("validation", "brightness", 1.0, 7.0)]]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_score(tmp_path, "colorfulness", higher=True) == 2.0
    with pytest.raises(BenchError, match="direction"):
        run_score(tmp_path, "colorfulness", higher=False)
    trials = [{"trial": 0, "score": 1.0}, {"trial": 1, "score": float("inf")}, {"trial": 2, "score": 3.0},
              {"trial": 3, "score": 3.0}]
    assert best_trial(trials, higher=True)["trial"] == 2  # ties go to the earlier trial; ±inf never wins
    assert best_trial(trials, higher=False)["trial"] == 0


def test_a_diverged_trial_counts_and_scores_worst(monkeypatch, tmp_path):
    import bench.run.runner
    from bench.sweep.protocol import SweepSettings
    from bench.sweep.study import run_trial

    def diverge(*args, **kwargs):
        raise BenchError("rocm-kl: non-finite loss (nan) at step 3; lower the learning rate")

    monkeypatch.setattr(bench.run.runner, "run_suite", diverge)
    s = SweepSettings(methods=["rocm-kl"], rewards=["brightness"], model="tiny", budget="200nfe", trials=2,
                      sampler="tpe", sweep_seeds=[100], select={"brightness": "colorfulness"})
    attrs = run_trial(s, "rocm-kl", "brightness", {"lr": 1.0}, tmp_path, [])
    assert attrs["score"] == float("-inf") and "non-finite" in attrs["error"]

    def mistake(*args, **kwargs):
        raise BenchError("corrupt results file x")

    monkeypatch.setattr(bench.run.runner, "run_suite", mistake)
    with pytest.raises(BenchError, match="corrupt"):  # a mistake to fix stops the sweep
        run_trial(s, "rocm-kl", "brightness", {"lr": 1.0}, tmp_path, [])


def test_stopped_trials_are_counted_but_never_selected(tmp_path):
    import optuna

    from bench.sweep.outputs import write_outputs
    from bench.sweep.protocol import SweepSettings
    from bench.sweep.study import open_study

    s = SweepSettings(methods=["ddpo"], rewards=["brightness"], model="tiny", budget="200nfe", trials=2,
                      sampler="random", sweep_seeds=[100], select={"brightness": "colorfulness"})
    study = open_study(tmp_path, "ddpo", "brightness", higher=True)
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    for value, score in ((1e-2, float("-inf")), (1e-3, 0.5)):
        study.enqueue_trial({"lr": value}, user_attrs={"folder": "x", "hacked": [] if score > 0 else None})
        study.tell(study.ask({"lr": lr}), score)
    table = write_outputs(tmp_path, s)
    assert "| ddpo | brightness | 200nfe | 2 | 1 | 0.5 | 0.5 | 0.5 | 0% | lr=0.001 | 0.5 |" in table
    assert json.loads((tmp_path / "selected.json").read_text())["methods"]["ddpo"]["brightness"]["trial"] == 1


def test_killed_sweep_resumes_to_exactly_the_requested_trials(swept):
    out, p, first_seed = swept
    trials = studies(out)
    assert set(trials) == {"rocm-kl__brightness", "ddpo__brightness"}
    for name, ts in trials.items():
        assert sum(t.state.name == "COMPLETE" for t in ts) == 2, name
        assert not any(t.state.name in ("RUNNING", "WAITING") for t in ts), name
    killed = [t for t in trials["rocm-kl__brightness"] if t.state.name == "FAIL"]
    assert len(killed) == 1 and killed[0].number == 0
    redo = next(t for t in trials["rocm-kl__brightness"] if t.user_attrs.get("resumes") == 0)
    assert redo.params == killed[0].params and redo.user_attrs["folder"] == "trial-0"
    runs = out / "trials" / "rocm-kl__brightness" / "trial-0" / "runs"
    assert (runs / "rocm-kl__brightness__seed100" / "eval.jsonl").read_bytes() == first_seed  # reused
    assert (runs / "rocm-kl__brightness__seed101.interrupted-1").is_dir()  # the killed run, moved aside
    assert "(resumes trial-0)" in p.stdout


def test_selection_uses_validation_and_sweep_seeds_and_is_written(swept):
    out, p, _ = swept
    settings = json.loads((out / "sweep.json").read_text())
    assert settings["sweep_seeds"] == [100, 101] and settings["select"] == {"brightness": "colorfulness"}
    assert settings["trials"] == 2 and "ddpo.samples_per_prompt=2" in settings["sets"] and settings["rule"]
    assert "samples_per_prompt" not in settings["knobs"]["ddpo"]  # fixed by --set: not tuned
    selected = json.loads((out / "selected.json").read_text())
    for name, ts in studies(out).items():
        method, reward = name.split("__")
        entry = selected["methods"][method][reward]
        done = [t for t in ts if t.state.name == "COMPLETE"]
        top = max(done, key=lambda t: (t.value, -t.number))
        assert entry["trial"] == top.number and entry["values"] == top.params and entry["score"] == top.value
        assert entry["rule"] == settings["rule"] and entry["selection_metric"] == "colorfulness"
        assert set(entry["seed_scores"]) == {"100", "101"}
        for run in (out / entry["folder"] / "runs").iterdir():
            if ".interrupted" not in run.name:
                assert {r["split"] for r in eval_rows(run)} == {"train", "validation"}  # never test
    table = (out / "sensitivity.md").read_text()
    assert "| rocm-kl | brightness | 200nfe | 2 |" in table and "Selection by colorfulness ↑" in table and "| ddpo | brightness |" in table
    assert table.strip() in p.stdout
    assert (out / "sensitivity.csv").read_text().startswith("method,reward,budget,metric,trials,stopped,min,median,max")


def test_from_sweep_runs_the_selected_configuration_on_test_prompts(swept, tmp_path):
    out, _, _ = swept
    final = tmp_path / "final"
    bench("run", "--from-sweep", str(out), "--seeds", "0", "--out", str(final), "--no-progress")
    selected = json.loads((out / "selected.json").read_text())["methods"]
    for method in ("rocm-kl", "ddpo"):
        run = final / "runs" / f"{method}__brightness__seed0"
        cfg = json.loads((run / "config.json").read_text())
        for field, value in selected[method]["brightness"]["values"].items():
            assert cfg["method_config"][field] == value, (method, field)
        assert cfg["eval"]["splits"] == ["train", "test"] and cfg["budget"]["text"] == "200nfe"
        assert {r["split"] for r in eval_rows(run)} == {"train", "test"}
    assert cfg["method_config"]["samples_per_prompt"] == 2  # the sweep's fixed --set travels too
    record = json.loads((final / "from_sweep.json").read_text())
    assert record["sweep"] == str(out.resolve()) and record["selected"]["ddpo"] == selected["ddpo"]["brightness"]
    assert "--from-sweep" in json.loads((final / "manifest.json").read_text())["commands"][-1]["argv"]


def test_from_sweep_at_another_budget_and_on_another_reward(swept, tmp_path):
    """The reference results report a selection at two budgets, and trained on the gold itself (ceiling rows)."""
    out, _, _ = swept
    final = tmp_path / "ceiling"
    pytest.importorskip("ray")
    bench("run", "--from-sweep", str(out), "--seeds", "0", "--methods", "rocm-kl", "--budget", "300nfe",
          "--rewards", "colorfulness", "--out", str(final), "--no-progress",
          "--executor", "ray", "--ray-workers", "1")  # the selected runs handed to an executor
    selected = json.loads((out / "selected.json").read_text())["methods"]["rocm-kl"]["brightness"]
    cfg = json.loads((final / "runs" / "rocm-kl__colorfulness__seed0" / "config.json").read_text())
    assert cfg["budget"]["text"] == "300nfe" and cfg["reward"] == "colorfulness"
    assert all(cfg["method_config"][k] == v for k, v in selected["values"].items())
    record = json.loads((final / "from_sweep.json").read_text())
    assert (record["reward"], record["tuned_on"], record["budget"]) == ("colorfulness", "brightness", "300nfe")
    assert record["tuning_budget"] == "200nfe" and record["selected"]["rocm-kl"] == selected


def cli_error(capsys, monkeypatch, *args) -> str:
    """Run the CLI in this process (no interpreter start-up); it must exit 2 with one line `error: ...`."""
    from bench.cli.main import main

    monkeypatch.setattr(sys, "argv", ["bench", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), (exit_.value, err)
    return err


def test_bad_sweep_input_is_one_line_and_exit_2(swept, tmp_path, capsys, monkeypatch):
    out, _, _ = swept
    for args, match in [
        (["sweep", "--methods", "rocm-kll", *TINY], "did you mean 'rocm-kl'"),
        (["sweep", "--sampler", "tpe", "--trials", "0", *TINY], "--trials must be >= 1"),
        (["sweep", "--sweep-seeds", "100", *TINY], ">= 2 sweep seeds"),
        (["sweep", "--lr-points", "1", *TINY], "--lr-points must be >= 2"),
        (["sweep", "--budgets", "100nfe,1s", *TINY], "one unit"),
        (["sweep", "--select", "brightness", *TINY], "training reward"),
        (["sweep", "--sampler", "grd", *TINY], "did you mean 'grid'"),
        (["sweep", "--methods", "rocm-kl", "--set", "method.lr=1e-3", "--set", "rocm.beta=1", *TINY], "no knobs"),
        ([*SWEEP, "--trials", "3", "--out", str(out)], "different settings (trials"),
        (["run", "--from-sweep", str(out), "--seeds", "0,101"], "--seeds 101"),
        (["run", "--from-sweep", str(out), "--methods", "d3po"], "no selected configuration"),
        (["run", "--from-sweep", str(out), "--methods", "ddpoo"], "did you mean 'ddpo'"),
        (["run", "--from-sweep", str(out), "--model", "tiny"], "comes from"),
        (["run", "--from-sweep", str(out), "--budget", "10parsecs"], "budget"),
        (["run", "--from-sweep", str(out), "--rewards", "brightnes"], "did you mean 'brightness'"),
        (["run", "--from-sweep", str(out), "--set", "sampler.steps=2"], "only eval.*"),
        (["run", "--from-sweep", str(tmp_path)], "not a sweep folder"),
    ]:
        assert match in cli_error(capsys, monkeypatch, *args), args
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(out / "sweep.json", broken / "sweep.json")
    assert "no selected.json" in cli_error(capsys, monkeypatch, "run", "--from-sweep", str(broken))
    (broken / "selected.json").write_text('{"methods": {"rocm-kl": {"brightness": 3}}}')
    assert "corrupt selection" in cli_error(capsys, monkeypatch, "run", "--from-sweep", str(broken))
    (broken / "selected.json").write_text('{"methods": {"rocm-kl"')  # end to end, as a user sees it
    one_line_error(bench("run", "--from-sweep", str(broken), check=False), "corrupt results file")
