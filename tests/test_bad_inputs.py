"""Bad input, as a new user types it, through the real entry point in this process (fast: validation only):
every one is one line `error: ...` and exit code 2, nothing written, never a traceback and never accepted without a
word. These are the inputs the issue-20 audit found slipping through (95 tried across every command); the
subprocess versions of the common ones are in tests/test_cli.py."""

from __future__ import annotations

import pytest

from tests.conftest import assert_one_line_error

TINY = ["--model", "tiny", "--budget", "1000nfe"]


@pytest.mark.parametrize("args,match", [
    (["run", *TINY, "--out", "/proc/forbidden/suite"], "cannot create --out"),
    (["run", *TINY, "--out", "{file}"], "is a file, not a folder"),
    (["run", *TINY, "--device", "tpu"], "unknown device 'tpu'"),
    (["run", *TINY, "--device", "cuda:abc"], "unknown device 'cuda:abc'"),
    (["run", *TINY, "--set", "sampler.guidance_scale=nan"], "sampler.guidance_scale must be a finite number"),
    (["run", *TINY, "--set", "sampler.guidance_scale=0.5"], "sampler.guidance_scale must be >= 1.0"),
    (["run", *TINY, "--set", "method.lr=inf"], "must be a finite number"),
    (["run", *TINY, "--set", "model.resolution=13"], "draws at its one size"),
    (["run", "--model", "sd15-lcm-random", "--set", "model.resolution=100"], "multiple of 64"),
    (["run", "--nope"], "No such option: --nope"),
    (["nope"], "No such command 'nope'"),
    (["sweep", "--trials", "abc"], "Invalid value for '--trials'"),
    (["claims", "/tmp"], "Missing option '--out'"),
    (["perf", "--model", "tiny", "--memory-steps", "a,b"], "bad --memory-steps"),
    (["perf", "--model", "tiny", "--out", "/proc/forbidden/perf.json"], "cannot create --out"),
    (["testbed", "build", "--out", "{file}", "--quick"], "is a file, not a folder"),
    (["gpu-check", "--device", "cpu", "--minutes", "0"], "--minutes must be > 0"),
])
def test_one_line_and_nothing_written(bench_cli, tmp_path, args, match):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = bench_cli(*[a.replace("{file}", str(afile)) for a in args])
    assert_one_line_error(code, err, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and afile.read_text() == "not a folder"
