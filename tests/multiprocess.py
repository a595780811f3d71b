"""Run the same `bench` command in one process and under `accelerate launch` with two CPU processes (gloo), for
the data-parallel tests: the two results must match."""

import os
import subprocess
import sys
from pathlib import Path

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
