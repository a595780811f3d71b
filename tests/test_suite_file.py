"""Suite files: `bench run --config FILE` resolves to the same suite as the equivalent flags, flags override the
file (--set flags after its [set] table), and a mistake in the file is one line with "did you mean"."""

from pathlib import Path

import pytest

from bench.cli.run import suite_from_options
from bench.run import suite_file
from bench.run.config import method_config, to_dict, validate
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
FILE = """
methods = ["rocm-kl", "ddpo"]
rewards = "brightness"
seeds = [0, 3]
budget = "300nfe"
model = "tiny"
out = "{out}"
device = "cpu"

[set]
"sampler.steps" = 3
eval.points = 2
eval.splits = ["train", "validation"]
rocm.beta = 0.5
ddpo = {{ clip_range = 0.002, prompt_replacement = true }}
method.lr = 1e-4
"""
FLAGS = suite_file.RunOptions(methods="rocm-kl,ddpo", rewards="brightness", seeds="0,3", budget="300nfe", model="tiny",
                              device="cpu", sets=["sampler.steps=3", "eval.points=2", "eval.splits=train,validation",
                                                  "rocm.beta=0.5", "ddpo.clip_range=0.002",
                                                  "ddpo.prompt_replacement=true", "method.lr=0.0001"])


def resolved(opts):
    """Everything a run is made from: the suite, each method's resolved config, the folder."""
    suite, out = suite_from_options(opts)
    validate(suite)
    return to_dict(suite), {m: to_dict(method_config(m, suite)[1]) for m in suite.methods}, out


def write(tmp_path, text):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_the_file_and_the_equivalent_flags_give_the_same_config(tmp_path):
    out = tmp_path / "suite"
    from_file = resolved(suite_file.load(write(tmp_path, FILE.format(out=out))))
    from_flags = resolved(suite_file.RunOptions(**{**vars(FLAGS), "out": str(out)}))
    assert from_file == from_flags
    suite, methods, _ = from_file
    assert suite["seeds"] == [0, 3] and suite["sampler"]["steps"] == 3 and suite["eval"]["splits"] == ["train",
                                                                                                       "validation"]
    assert methods["rocm-kl"]["beta"] == 0.5 and methods["ddpo"]["clip_range"] == 0.002
    assert methods["ddpo"]["prompt_replacement"] is True and methods["rocm-kl"]["lr"] == 1e-4


def test_flags_override_the_file(tmp_path, bench_cli, monkeypatch):
    path = write(tmp_path, FILE.format(out=tmp_path / "from-file"))
    seen = {}
    monkeypatch.setattr("bench.run.launch.launch", lambda suite, out, **kw: seen.update(suite=suite, out=out) or [])
    code, _, err = bench_cli("run", "--config", str(path), "--seeds", "7", "--methods", "ddpo", "--out",
                             str(tmp_path / "flag"), "--set", "sampler.steps=2", "--set", "ddpo.clip_range=0.01")
    assert code == 0, err
    suite = seen["suite"]
    assert seen["out"] == tmp_path / "flag" and suite.seeds == [7] and suite.methods == ["ddpo"]
    assert suite.sampler.steps == 2 and suite.eval.points == 2  # a flag's --set wins; the file's others stay
    assert suite.budget.text == "300nfe" and suite.model.name == "tiny" and suite.device == "cpu"
    assert method_config("ddpo", suite)[1].clip_range == 0.01


@pytest.mark.parametrize("text, match", [
    ('methds = ["ddpo"]', "unknown key in {path} 'methds'; did you mean 'methods'?"),
    ('[set]\nsampler.stepz = 2', "did you mean 'sampler.steps'?"),
    ('[set]\nddpo.clip_rang = 0.1', "did you mean 'ddpo.clip_range'?"),
    ('budget = 2000', "budget needs its unit"),
    ('seeds = [0, "one"]', "bad --seeds"),
    ('methods = ["ddpo"', "not valid TOML"),
    ('set = 3', "'set' must be a table"),
    ('[set]\nsampler.steps = 0', "sampler.steps must be >= 1"),
])
def test_a_bad_suite_file_is_one_line(tmp_path, bench_cli, text, match):
    path = write(tmp_path, text)
    code, _, err = bench_cli("run", "--config", str(path), "--model", "tiny", "--budget", "100nfe", "--out",
                             str(tmp_path / "suite"))
    assert_one_line_error(code, err, match.format(path=path))
    assert not (tmp_path / "suite").exists()


def test_a_missing_suite_file(tmp_path, bench_cli):
    code, _, err = bench_cli("run", "--config", str(tmp_path / "nope.toml"))
    assert_one_line_error(code, err, "suite file not found")


def test_the_example_files_resolve():
    suite, methods, out = resolved(suite_file.load(REPO / "examples" / "testbed.toml"))
    assert suite["model"]["name"] == "testbed" and out == Path("results/testbed-suite") and "rocm-kl" in methods
    gpu, _ = suite_from_options(suite_file.load(REPO / "examples" / "gpu-dreamshaper.toml"))  # weights not here
    assert gpu.model.name == "lcm-dreamshaper-v7" and gpu.model.dtype == "bfloat16" and gpu.sampler.steps == 8
