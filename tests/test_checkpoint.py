"""Mid-run checkpoints (bench/run/checkpoint.py): for every registered method, a run stopped after a checkpoint and
resumed in a fresh policy and method ends bit-identical to an uninterrupted run with the same count budget —
every eval.jsonl and train.jsonl value except the wall-time `seconds`, and the adapter — with what the resume
cut from the logs kept aside; an unusable checkpoint means the attempt is moved aside and redone; a save that
dies halfway leaves the previous checkpoint intact; the file loads with torch.load(weights_only=True).

The stop is an exception raised when the runner asks for a later checkpoint: the rows of the step after the last
checkpoint are already written (as a kill would leave them), and a torn line is appended to train.jsonl."""

import json

import pytest
import torch
from safetensors.torch import load_file

from bench.core.compute import Budget
from bench.registry.catalog import METHODS
from bench.run import checkpoint
from bench.run.config import SuiteConfig, apply_sets
from bench.run.runner import run_suite

SETS = ["eval.points=2", "eval.max_prompts=2", "eval.samples_per_prompt=2", "eval.min_images=0",
        "method.batch_size=4", *(f"{f}.{k}=2" for f in ("ddpo", "grpo") for k in ("prompts_per_step",
                                                                                 "samples_per_prompt")),
        "ddpo.train_batch_size=4", "grpo.train_batch_size=4", "dpok.train_batch_size=4", "dpok.updates_per_step=1",
        "dpok.accumulation=2", "d3po.train_batch_size=2", "rebel.train_batch_size=2", "eval.metrics=brightness",
        "checkpoint.every_steps=1"]
WALL = ("seconds",)  # wall-time fields: the only ones a resumed run may change


def step_nfe(method: str, sets=()) -> int:
    """NFE of one outer step with these settings, as the method declares it (at most: AlignProp's K varies)."""
    from bench.run.config import apply_model_defaults, method_config

    s = SuiteConfig(methods=[method], rewards=["brightness"], seeds=[0], budget=Budget.parse("1nfe"))
    apply_sets(s, [*SETS, *sets])
    apply_model_defaults(s)
    _, cfg = method_config(method, s)
    cfg.validate(method, s.sampler)
    return cfg.nfe_per_step(s.sampler)


def suite_of(method: str, budget: str = "", sets=()) -> SuiteConfig:
    """`method` on tiny with a count budget of about 4.5 steps (by default)."""
    budget = budget or f"{step_nfe(method, sets) * 9 // 2}nfe"
    s = SuiteConfig(methods=[method], rewards=["brightness"], seeds=[0], budget=Budget.parse(budget))
    apply_sets(s, [*SETS, *sets])
    return s


class Stop(Exception):
    """Stands for a kill."""


def rows(path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in WALL} for line in path.read_text().splitlines()]


def stop_at_save(monkeypatch, n: int) -> None:
    """Let n checkpoints be saved, then raise when the runner asks for the next one."""
    real, calls = checkpoint.save, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) > n:
            raise Stop
        real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)


def stopped_run(monkeypatch, suite: SuiteConfig, out, saves: int = 2):
    """The run folder of `suite` in `out` stopped (as by a kill) when it asks for checkpoint number saves + 1."""
    with monkeypatch.context() as m:
        stop_at_save(m, saves)
        with pytest.raises(Stop):
            run_suite(suite, out, show_progress=False)
    (run,) = (out / "runs").iterdir()
    return run


def assert_identical(a, b) -> None:
    assert rows(a / "eval.jsonl") == rows(b / "eval.jsonl")
    assert rows(a / "train.jsonl") == rows(b / "train.jsonl")
    wa, wb = load_file(str(a / "adapter.safetensors")), load_file(str(b / "adapter.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# rocm-js/-hellinger/-tv/-chi2 differ from rocm-kl only in the divergence's formula, not in any state a checkpoint
# holds: slow-marked to keep the default run short (`pytest -m slow tests/test_checkpoint.py` runs them)
SAME_STATE_AS_ROCM_KL = {"rocm-js", "rocm-hellinger", "rocm-tv", "rocm-chi2"}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in SAME_STATE_AS_ROCM_KL else m
                                    for m in METHODS])
def test_resumed_run_is_bit_identical(tmp_path, monkeypatch, method):
    (whole,) = run_suite(suite_of(method), tmp_path / "whole", show_progress=False)
    steps = len(rows(whole / "train.jsonl"))
    assert steps >= 4, steps  # enough to stop half-way
    assert not (whole / checkpoint.FILE).exists()  # removed once summary.json is written
    with monkeypatch.context() as m:
        stop_at_save(m, 2)
        with pytest.raises(Stop):
            run_suite(suite_of(method), tmp_path / "cut", show_progress=False)
    (run,) = (tmp_path / "cut" / "runs").iterdir()
    assert len(rows(run / "train.jsonl")) == 3  # one step past the checkpoint
    with open(run / "train.jsonl", "a") as f:
        f.write('{"step": 4, "nf')  # a torn append
    assert torch.load(run / checkpoint.FILE, weights_only=True)["method"]["steps_done"] == 2
    (resumed,) = run_suite(suite_of(method), tmp_path / "cut", show_progress=False)
    assert resumed == run and not (tmp_path / "cut" / "runs" / f"{run.name}.interrupted-1").exists()
    assert_identical(whole, resumed)
    kept = (run / "train.jsonl.after-checkpoint").read_text().splitlines()
    assert json.loads(kept[0])["step"] == 3 and kept[1] == '{"step": 4, "nf'  # the cut rows, kept


def test_flop_budget_resumes_bit_identical(tmp_path, monkeypatch):
    """A FLOP budget, and a stop during an evaluation point's checkpoint (its rows already written)."""
    sets = ["checkpoint.every_steps=0"]  # checkpoints at evaluation points only
    (whole,) = run_suite(suite_of("ddpo", "55gflop", sets + ["eval.points=4"]), tmp_path / "whole",
                         show_progress=False)
    with monkeypatch.context() as m:
        stop_at_save(m, 1)
        with pytest.raises(Stop):
            run_suite(suite_of("ddpo", "55gflop", sets + ["eval.points=4"]), tmp_path / "cut", show_progress=False)
    (run,) = run_suite(suite_of("ddpo", "55gflop", sets + ["eval.points=4"]), tmp_path / "cut", show_progress=False)
    assert_identical(whole, run)
    assert (run / "eval.jsonl.after-checkpoint").exists()  # the second point's rows, cut and recomputed


@pytest.mark.parametrize("damage", ["garbage", "other-config"])
def test_unusable_checkpoint_means_redo(tmp_path, monkeypatch, capsys, damage):
    out = tmp_path / "suite"
    run = stopped_run(monkeypatch, suite_of("rocm-kl"), out)
    if damage == "garbage":
        (run / checkpoint.FILE).write_bytes(b"not a checkpoint")
    else:  # as if the run had been started with another learning rate
        state = torch.load(run / checkpoint.FILE, weights_only=True)
        state["config"]["method_config"]["lr"] = 1.0
        torch.save(state, run / checkpoint.FILE)
    run_suite(suite_of("rocm-kl"), out, show_progress=False)
    assert "moved to rocm-kl__brightness__seed0.interrupted-1 and redone" in capsys.readouterr().err
    assert (out / "runs" / f"{run.name}.interrupted-1" / checkpoint.FILE).exists()  # kept aside
    (whole,) = run_suite(suite_of("rocm-kl"), tmp_path / "whole", show_progress=False)
    assert_identical(whole, run)


def test_a_save_that_dies_halfway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "suite"
    run = stopped_run(monkeypatch, suite_of("d3po"), out)
    before = (run / checkpoint.FILE).read_bytes()

    def die(point):
        if point == "checkpoint-write":
            raise Stop

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "fault", die)
        with pytest.raises(Stop):
            run_suite(suite_of("d3po"), out, show_progress=False)
    assert (run / checkpoint.FILE).read_bytes() == before
    assert not list(run.glob(".checkpoint.pt.*.tmp"))


def test_checkpoint_settings_are_validated_and_not_a_suite_setting(tmp_path):
    from bench.core.errors import BenchError
    from bench.run.config import validate

    with pytest.raises(BenchError, match="checkpoint.every_steps must be >= 0"):
        validate(suite_of("rocm-kl", sets=["checkpoint.every_steps=-1"]))
    run_suite(suite_of("refl"), tmp_path, show_progress=False)
    run_suite(suite_of("refl", sets=["checkpoint.every_minutes=5"]), tmp_path, show_progress=False)  # resumable


@pytest.mark.slow
def test_two_process_run_resumes(tmp_path):
    """Under `accelerate launch` (2 CPU processes): process 0 writes the checkpoint with both processes' RNGs and
    meters, and both load it. Killed halfway through its third checkpoint write and rerun, the run continues
    (not redone) and equals an uninterrupted 2-process run: the same steps and NFE, the same adapter (exactly
    where each process's text-embedding cache came out the same, see bench/run/checkpoint.py; within float noise
    otherwise)."""
    import subprocess

    from tests.multiprocess import ENV, LAUNCH

    args = ["run", "--model", "tiny", "--methods", "ddpo", "--rewards", "brightness", "--budget", "300nfe",
            "--no-progress", *(x for s in SETS for x in ("--set", s))]
    for name, env in (("whole", ENV), ("cut", ENV | {checkpoint.FAULT_ENV: "checkpoint-write:3"}), ("cut", ENV)):
        p = subprocess.run([*LAUNCH, *args, "--out", str(tmp_path / name)], env=env, capture_output=True, text=True,
                           timeout=600)
        assert (p.returncode == 0) == (checkpoint.FAULT_ENV not in env), p.stderr[-3000:]
    (a,), (b,) = ((tmp_path / n / "runs").iterdir() for n in ("whole", "cut"))
    assert json.loads((b / "summary.json").read_text())["processes"] == 2
    assert (b / "train.jsonl.after-checkpoint").exists()  # resumed (step 3's row cut), not redone
    assert not list((tmp_path / "cut" / "runs").glob("*.interrupted-*"))
    ta, tb = rows(a / "train.jsonl"), rows(b / "train.jsonl")
    assert [(r["step"], r["nfe"]) for r in ta] == [(r["step"], r["nfe"]) for r in tb]
    wa, wb = load_file(str(a / "adapter.safetensors")), load_file(str(b / "adapter.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=5e-5)
