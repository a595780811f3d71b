"""Run the same `bench` command in one process and under `accelerate launch` with two CPU processes (gloo), for
the data-parallel tests: the two results must match."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bench"]


def one_and_two_processes(args: list[str], tmp_path: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """`bench ARGS --out tmp/one` in one process, then under a 2-process launch into tmp/two (asserted to succeed);
    returns both suite folders and the launch's completed process (its stdout, e.g. who reported)."""
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "bench", *args, "--out", str(one)], check=True, env=ENV, timeout=600)
    p = subprocess.run([*LAUNCH, *args, "--out", str(two)], env=ENV, timeout=600, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return one, two, p


def assert_same_training(one: Path, two: Path, initial: dict) -> None:
    """Run folders `one` (1 process) and `two` (2 processes) trained alike. `initial`: the trainable weights at the
    start (the same seed builds the same LoRA initialisation).

    Tolerances come from the arithmetic, not from a machine. The two runs sum the same per-sample terms in another
    order (each process sums its rows, then gloo sums the two): reordering a float32 sum of n terms moves it by at
    most ~n·2^-24 times the sum of their magnitudes, so every logged gradient norm agrees within 1e-4 relative and
    every loss (a mean of O(1) terms that may cancel to near zero) within 1e-5 absolute per unit of its size.
    The weights: AdamW normalises each element's update (≈ ±lr per update), so an element whose gradient is
    within float noise of zero may move differently by up to its whole update; one such element changes the
    distance between the two runs' weights by about 2/√n of the distance trained (n elements: 1.1% for the tiny
    LoRA's 30,720). 5% of the distance trained allows a few of those, while a run that trained on other rows, or
    missed a process's gradient, differs by order one."""
    from safetensors.torch import load_file

    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert b["processes"] == 2 and a["processes"] == 1
    assert (a["nfe"], a["steps"], a["images"]) == (b["nfe"], b["steps"], b["images"])  # counted across processes
    rows_a, rows_b = ([json.loads(line) for line in (d / "train.jsonl").read_text().splitlines()] for d in (one, two))
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        assert abs(ra["grad_norm"] - rb["grad_norm"]) <= 1e-4 * abs(ra["grad_norm"]), (ra["grad_norm"], rb["grad_norm"])
        assert abs(ra["loss"] - rb["loss"]) <= 1e-5 * max(1.0, abs(ra["loss"])), (ra["loss"], rb["loss"])
    wa, wb = (load_file(str(d / "adapter.safetensors")) for d in (one, two))
    trained = torch.cat([(wa[k] - initial[k]).flatten() for k in wa])
    apart = torch.cat([(wa[k] - wb[k]).flatten() for k in wa])
    assert float(trained.norm()) > 0  # it trained
    assert float(apart.norm()) <= 0.05 * float(trained.norm()), (float(apart.norm()), float(trained.norm()))


def tiny_initial_weights(seed: int = 0) -> dict:
    """The trainable weights a run of `tiny` with `seed` starts from (the runner seeds torch, then builds)."""
    from bench.core.policy import ModelConfig
    from bench.core.tiny import tiny

    torch.manual_seed(seed)
    return tiny(ModelConfig()).trainable_state_dict()
