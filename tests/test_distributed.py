"""Data parallelism: `accelerate launch` with 2 CPU processes (gloo) gives the same training as 1 process
with the same global batch — the same compute charged, the same weights within float tolerance, one writer."""

from tests.multiprocess import assert_same_training, one_and_two_processes, tiny_initial_weights

ARGS = ["run", "--model", "tiny", "--methods", "rocm-kl,ddpo,d3po", "--rewards", "brightness", "--budget", "200nfe",
        "--no-progress",
        "--set", "eval.points=1", "--set", "eval.max_prompts=2", "--set", "eval.min_images=0",
        "--set", "method.batch_size=8", "--set", "ddpo.prompts_per_step=2", "--set", "ddpo.samples_per_prompt=4",
        "--set", "ddpo.train_batch_size=4", "--set", "d3po.train_batch_size=2"]


def test_two_processes_match_one(tmp_path):
    one, two, p = one_and_two_processes(ARGS, tmp_path)
    assert p.stdout.count("runs in") == 1  # one process reports
    initial = tiny_initial_weights(0)
    for run in (one / "runs").iterdir():
        assert_same_training(one / "runs" / run.name, two / "runs" / run.name, initial)
