"""Executors (bench/run/executors.py) on the tiny model: a 4-run suite on a local 2-CPU Ray instance and through
submitit's local executor (the SLURM path) gives the same eval.jsonl values, summary finals and adapter weights
as the serial loop; a preempted SLURM job is requeued and resumes; `bench sweep --executor ray` equals a serial
sweep; concurrent manifest updates and Optuna writers lose nothing; bad options are one line and exit 2.

Slow-marked (run with `.venv/bin/python -m pytest -m slow tests/test_executors.py`): the SLURM-path suite, a
failed Ray run, and the sweep, each over a minute on 2 CPU cores."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from bench.core.compute import Budget
from bench.core.errors import BenchError
from bench.run.config import SuiteConfig, apply_sets
from bench.run.executors import ExecutorConfig, check, slurm_executor, torch_threads
from bench.run.launch import SlurmRun, launch
from bench.run.runner import run_suite, write_manifest
from tests.conftest import assert_one_line_error

pytest.importorskip("ray")
pytest.importorskip("submitit")

SETS = ["eval.points=2", "eval.max_prompts=2", "eval.samples_per_prompt=2", "eval.min_images=0",
        "method.batch_size=4", "ddpo.prompts_per_step=2", "ddpo.samples_per_prompt=2", "ddpo.train_batch_size=4"]
RAY = ExecutorConfig(kind="ray", ray_workers=2)  # a local instance of 2 CPUs, no dashboard, shut down after
SLURM_LOCAL = ExecutorConfig(kind="slurm", slurm_cluster="local", slurm_gpus=0, slurm_cpus=1)


def four_runs() -> SuiteConfig:
    suite = SuiteConfig(methods=["rocm-kl", "ddpo"], rewards=["brightness"], seeds=[0, 1],
                        budget=Budget.parse("400nfe"))
    suite.model.name = "tiny"
    apply_sets(suite, SETS)
    return suite


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    """The serial suite, with the torch threads the executors' runs get (1 CPU each, or OMP_NUM_THREADS): a
    different thread count changes float reductions, hence the last bits (CI sets no OMP_NUM_THREADS)."""
    out = tmp_path_factory.mktemp("serial") / "suite"
    with task_threads():
        run_suite(four_runs(), out, argv=["bench", "run"], show_progress=False)
    return out


@contextmanager
def task_threads():
    """This process's torch threads set to what a 1-CPU task or job gets, for the duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads(1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def results_of(run: Path) -> tuple:
    """What must not depend on the executor: every evaluated value, the summary's finals, the trained weights."""
    from safetensors.torch import load_file

    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    weights = load_file(str(run / "adapter.safetensors"))
    return ([(r["metric"], r["split"], r["fraction"], r["value"]) for r in rows],
            {k: v for k, v in summary.items() if k.startswith("final") or k in ("steps", "nfe", "flops")},
            {k: w.numpy().tobytes() for k, w in weights.items()})


def assert_same_runs(a: Path, b: Path, names: list[str] | None = None) -> None:
    names = names or sorted(p.name for p in (a / "runs").iterdir())
    assert len(names) >= 1
    for name in names:
        assert results_of(a / "runs" / name) == results_of(b / "runs" / name), name


def test_ray_with_two_workers_gives_the_serial_results(serial, tmp_path):
    import ray

    out = tmp_path / "suite"
    try:
        dirs = launch(four_runs(), out, argv=["bench", "run", "--executor", "ray"], show_progress=False,
                         executor=RAY)
        assert not ray.is_initialized()  # the local instance it started is shut down
    finally:
        ray.shutdown()
    assert len(dirs) == 4 and all((d / "summary.json").exists() for d in dirs)
    assert_same_runs(serial, out)
    assert len(json.loads((out / "manifest.json").read_text())["commands"]) == 1  # written once, by the driver


@pytest.mark.slow
def test_a_failed_ray_run_is_one_line_and_the_others_finish(serial, tmp_path):
    """One run refused (its lock held here, as by another writer) is one line of the error, and the three others
    finish; the same command then completes it. Every run equals the serial one."""
    import ray

    from bench.results.locks import file_lock

    out, argv = tmp_path / "suite", ["bench", "run", "--executor", "ray"]
    try:
        with file_lock(out / ".locks" / "ddpo__brightness__seed1.lock"), pytest.raises(BenchError) as e:
            launch(four_runs(), out, argv=argv, show_progress=False, executor=RAY)
        assert not ray.is_initialized()  # shut down after a failure too
        assert len(str(e.value).splitlines()) == 1 and "1 of 4 runs failed" in str(e.value)
        assert "ddpo__brightness__seed1" in str(e.value) and "another process" in str(e.value)
        assert sorted(p.name for p in (out / "runs").iterdir()) == ["ddpo__brightness__seed0",
                                                                    "rocm-kl__brightness__seed0",
                                                                    "rocm-kl__brightness__seed1"]
        launch(four_runs(), out, argv=argv, show_progress=False, executor=RAY)
    finally:
        ray.shutdown()
    assert_same_runs(serial, out)
    assert len(json.loads((out / "manifest.json").read_text())["commands"]) == 2  # once per command


@pytest.mark.slow
def test_slurm_path_with_submitits_local_executor_gives_the_serial_results(serial, tmp_path):
    out = tmp_path / "suite"
    dirs = launch(four_runs(), out, argv=["bench", "run", "--executor", "slurm"], show_progress=False,
                     executor=SLURM_LOCAL)
    assert len(dirs) == 4
    assert_same_runs(serial, out)
    assert list((out / "slurm").glob("*_log.out"))  # submitit's logs are in the suite folder


def test_a_preempted_slurm_job_is_requeued_and_resumes_from_its_checkpoint(serial, tmp_path):
    """SIGUSR2 is what SLURM sends before preempting or timing out a job: submitit calls SlurmRun.checkpoint,
    which resubmits the job, and the requeued job's run_spec continues from checkpoint.pt."""
    import psutil

    suite, out, spec = four_runs(), tmp_path / "suite", ("rocm-kl", "brightness", 0)
    write_manifest(suite, out, ["bench", "run"])
    job = slurm_executor(SLURM_LOCAL, out / "slurm", suite.device).submit(SlurmRun(suite, out, spec, (), 1))
    run = out / "runs" / "rocm-kl__brightness__seed0"
    deadline = time.time() + 300
    while not (run / "checkpoint.pt").exists():  # the checkpoint of the first evaluation point
        assert time.time() < deadline and not job.done(), job.stderr()
        time.sleep(0.05)
    (task,) = psutil.Process(job._process.pid).children()  # submitit's local controller runs the job's process
    task.send_signal(signal.SIGUSR2)
    assert job.result() == (str(run), None)
    log = job.stdout() + (job.stderr() or "")
    assert "preempted" in log and "Requeued" in log, log
    assert not list(run.parent.glob("*.interrupted-*"))  # continued, not redone
    assert_same_runs(serial, out, [run.name])


def test_concurrent_manifest_updates_lose_no_command(tmp_path):
    import diffusers  # noqa: F401  (imported once here rather than in every forked writer: command_record)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    out, n, each = tmp_path / "suite", 6, 4
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(n)
    procs = [ctx.Process(target=append_commands, args=(out, i, each, start)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    argvs = [c["argv"] for c in json.loads((out / "manifest.json").read_text())["commands"]]
    assert sorted(argvs) == sorted(["bench", f"p{i}", f"c{k}"] for i in range(n) for k in range(each))


def append_commands(out: Path, i: int, each: int, start) -> None:
    start.wait()
    for k in range(each):
        write_manifest(four_runs(), out, ["bench", f"p{i}", f"c{k}"])


def test_concurrent_optuna_writers_in_one_storage_lose_nothing(tmp_path):
    """Studies of a sweep run side by side share optuna.db (bench.sweep.study.open_study waits for SQLite's lock)."""
    from bench.sweep.study import open_study

    for k in range(3):  # the driver creates the studies first (bench.sweep.driver.run_studies_on_ray)
        open_study(tmp_path, f"m{k}", "r", True)
    code = ("import sys; from pathlib import Path; from bench.sweep.study import open_study\n"
            "s = open_study(Path(sys.argv[1]), sys.argv[2], 'r', True)\n"
            "for i in range(25):\n t = s.ask(); t.set_user_attr('i', i); s.tell(t, float(i))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), f"m{k}"], stderr=subprocess.PIPE,
                              text=True) for k in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    for k in range(3):
        trials = open_study(tmp_path, f"m{k}", "r", True).get_trials()
        assert sorted(t.value for t in trials) == [float(i) for i in range(25)]


@pytest.mark.slow
def test_sweep_on_ray_equals_a_serial_sweep(tmp_path):
    from bench.sweep.driver import run_sweep
    from bench.sweep.protocol import SweepSettings

    def settings():
        return SweepSettings(methods=["rocm-kl", "ddpo"], rewards=["brightness"], model="tiny", budget="200nfe",
                             trials=2, sampler="tpe", sweep_seeds=[100], select={"brightness": "colorfulness"},
                             sets=["eval.points=1", *[s for s in SETS if not s.startswith("eval.points")]])

    import ray

    with task_threads():
        run_sweep(settings(), tmp_path / "serial", argv=["bench", "sweep"], show_progress=False)
    try:
        run_sweep(settings(), tmp_path / "ray", argv=["bench", "sweep"], show_progress=False, executor=RAY)
    finally:
        ray.shutdown()
    for name in ("selected.json", "trials.csv", "sensitivity.md"):
        assert (tmp_path / "serial" / name).read_text() == (tmp_path / "ray" / name).read_text(), name
    for study in ("rocm-kl__brightness", "ddpo__brightness"):
        for trial in ("trial-0", "trial-1"):
            folder = Path("trials") / study / trial
            assert_same_runs(tmp_path / "serial" / folder, tmp_path / "ray" / folder)


@pytest.mark.parametrize("args, match", [
    (["--executor", "rayy"], "did you mean 'ray'"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:9"], "cannot reach the Ray cluster at 127.0.0.1:9"),
    (["--executor", "ray", "--ray-address", "nowhere"], "bad --ray-address"),
    (["--slurm-partition", "gpu", "--slurm-time", "60"], "--slurm-partition, --slurm-time: only with --executor slurm"),
    (["--executor", "slurm", "--ray-workers", "2"], "--ray-workers: only with --executor ray"),
    (["--executor", "ray", "--cpus-per-run", "-1"], "--cpus-per-run must be positive"),
    (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run must be zero or more"),
    (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time must be positive"),
    (["--executor", "slurm"], "no sbatch on this machine's PATH"),
])
def test_bad_executor_options_are_one_line_and_exit_2(bench_cli, tmp_path, args, match):
    out = tmp_path / "suite"
    code, _, err = bench_cli("run", "--model", "tiny", "--methods", "rocm-kl", "--rewards", "brightness",
                             "--budget", "1000nfe", "--out", str(out), "--no-progress", *args)
    assert_one_line_error(code, err, match)
    assert not out.exists()  # nothing was written


def test_sweep_executor_options_are_checked(bench_cli, tmp_path):
    for args, match in ((["--executor", "slurm"], "bench sweep --executor: serial or ray"),
                        (["--executor", "serial", "--cpus-per-run", "2"], "only with --executor ray")):
        code, _, err = bench_cli("sweep", "--model", "tiny", "--methods", "rocm-kl", "--rewards", "brightness",
                                 "--out", str(tmp_path / "sw"), "--no-progress", *args)
        assert_one_line_error(code, err, match)
    with pytest.raises(BenchError, match="unknown executor 'slurmm'; did you mean 'slurm'"):
        check(ExecutorConfig(kind="slurmm"))


def test_torch_threads_follow_omp_num_threads_or_the_cpus_asked_for(monkeypatch):
    from bench.run.executors import torch_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_threads(1) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert torch_threads(2.5) == 3 and torch_threads(0.5) == 1
    assert torch.get_num_threads() >= 1
