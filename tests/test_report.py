"""bench.analysis.report, bench.analysis.judge and the results schema (bench.results.schema) the runner writes and the report reads.

The report's outputs, its index, its frontier plot and its hacking flags are checked on a suite folder written by
the real `bench run` on the tiny model, twice into one folder (seed 0, then seed 1 added: a module fixture, ~30 s),
and on two runs of a protocol-1 suite once published in results/testbed (kept in tests/data/protocol1-testbed); every
published manifest, and the old-schema ones kept in tests/data/old-manifests, is read.
Hand-made folders only test tolerance of odd files (corrupt, torn, empty, interrupted); bench.analysis.judge's pure
functions are checked on small hand-made frames with known answers.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from bench.analysis import judge
from bench.analysis.report import build_report
from bench.analysis.table import tex_escape
from bench.core.errors import BenchError
from bench.registry.catalog import MODEL_DEFAULTS
from bench.results import schema
from bench.run.runner import PROTOCOL
from bench.results.io import append_jsonl, read_json, read_jsonl, run_id, write_json_atomic
from bench.run.runner import PROTOCOL

REPO = Path(__file__).resolve().parents[1]
METHODS = ["rocm-kl", "rocm-none", "ddpo"]
REWARD = "brightness"
SEEDS = [0, 1]
BUDGET = "200nfe"
FAST = ["rocm-none.lr=0.01"]  # unregularised ROCM at 3x its lr: it hacks within the tiny budget


def small_sets(methods: list[str]) -> list[str]:
    """`--set` values that make the suite cheap, for the fields the config classes have right now (the runner
    and the methods change under this test: DDPO's batch is prompts_per_step x samples_per_prompt)."""
    from bench.registry.lookup import method_class
    from bench.run.config import EvalConfig

    have = {f.name for f in dataclasses.fields(EvalConfig)}
    small = (("points", 2), ("max_prompts", 2), ("samples_per_prompt", 2), ("min_images", 4))
    sets = [f"eval.{k}={v}" for k, v in small if k in have]
    for m in methods:
        fields = {f.name for f in dataclasses.fields(method_class(m)[0].Config)}
        if "prompts_per_step" in fields:
            sets += [f"{m}.prompts_per_step=2", f"{m}.samples_per_prompt=2"]
        elif "batch_size" in fields:
            sets.append(f"{m}.batch_size=4")
        if "train_batch_size" in fields:
            sets.append(f"{m}.train_batch_size=4")
    return sets


def bench_run(*args: str) -> list[str]:
    """`bench run ARGS` through the real command line, in this process (no interpreter start-up); its argv."""
    from bench.cli.main import app

    argv = ["bench", "run", *args]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)  # what the runner records, as from a shell
        app(argv[1:], standalone_mode=False)
    return argv


def suite_args(out: Path, seed: int) -> list[str]:
    return ["--model", "tiny", "--methods", ",".join(METHODS), "--rewards", REWARD, "--seeds", str(seed),
            "--budget", BUDGET, "--out", str(out), "--no-progress",
            *(a for s in [*small_sets(METHODS), *FAST] for a in ("--set", s))]


@pytest.fixture(scope="module")
def runner_commands(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """3 methods x brightness on the tiny model, 200 NFE, evaluated at 0, 0.5 and 1, by two `bench run` commands
    into one folder: seed 0, then seed 1 (the first command's runs are skipped as complete). (folder, argvs)."""
    out = tmp_path_factory.mktemp("runner") / "suite"
    return out, [bench_run(*suite_args(out, seed)) for seed in SEEDS]


@pytest.fixture(scope="module")
def runner_suite(runner_commands) -> Path:
    return runner_commands[0]


@pytest.fixture(scope="module")
def runner_report(runner_suite) -> tuple[Path, list[Path]]:
    return runner_suite, build_report(runner_suite)


def run_frames(suite: Path) -> dict[str, pd.DataFrame]:
    return {d.name: pd.DataFrame(read_jsonl(d / "eval.jsonl")) for d in sorted((suite / "runs").iterdir())}


def read_table(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "table.csv") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def md_rows(out: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(header, {method: cells}) of table.md."""
    lines = [line.strip("|").split(" | ") for line in (out / "table.md").read_text().splitlines()]
    header = [c.strip() for c in lines[0]]
    return header, {row[0].strip(): [c.strip() for c in row] for row in lines[2:]}


def split_of(frames: dict[str, pd.DataFrame]) -> str:
    return judge.reported_split(pd.concat(frames.values())["split"].unique())


def expected_hacked(frames: dict[str, pd.DataFrame], method: str) -> list[str]:
    """The majority rule applied by hand to judge.hacking on each seed's eval.jsonl."""
    split = split_of(frames)
    flags = [judge.hacking(frames[run_id(method, REWARD, s)], REWARD, split) for s in SEEDS]
    return sorted(m for m in flags[0] if sum(f[m] for f in flags) > len(SEEDS) / 2)


# ------------------------------------------------------------------------------------- the real runner's suite

def test_writes_every_output(runner_report):
    suite, written = runner_report
    out = suite / "report"
    metrics = set(pd.concat(run_frames(suite).values())["metric"])
    expected = ({"table.md", "table.csv", "table.tex", "comparisons.md", f"frontier_{REWARD}.png", "overfitting.png",
                 "reward_vs_divergence.png", "index.md"} | {f"metric_{m}.png" for m in metrics}
                | {f"grid_{m}__{REWARD}.png" for m in METHODS})
    assert {p.name for p in written} == expected
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left behind
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(p) as im:
                im.verify()
            with Image.open(p) as im:
                assert im.size[0] > 300
    index = (out / "index.md").read_text()
    assert f"![frontier_{REWARD}](frontier_{REWARD}.png)" in index and "(grid_ddpo__brightness.png)" in index
    assert "bench run --model tiny" in index and "95% interval" in index and "↑" in index
    protocol = json.loads((suite / "manifest.json").read_text()).get("protocol", 1)
    assert f"- **protocol**: {protocol}" in index
    assert ("Warning: protocol 1" in index) == (protocol == 1)
    assert f"reported split, **{split_of(run_frames(suite))}**" in index
    tex = (out / "table.tex").read_text()
    assert r"\pm" in tex and r"$\uparrow$" in tex and r"\textbf{" in tex


def test_frontier_has_one_panel_per_untrained_metric(runner_report):
    suite, _ = runner_report
    from bench.analysis.plots import frontier_metrics

    ev = pd.concat(run_frames(suite).values()).assign(reward=REWARD)
    panels = frontier_metrics(ev, REWARD, split_of(run_frames(suite)))
    assert REWARD not in panels and judge.KL not in panels and len(panels) >= 1
    with Image.open(suite / "report" / f"frontier_{REWARD}.png") as im:
        assert im.size[0] >= 300 * min(len(panels), 3)


def test_table_has_peak_and_hacked_columns_consistent_with_judge(runner_report):
    suite, _ = runner_report
    frames, out = run_frames(suite), suite / "report"
    split, select = split_of(frames), MODEL_DEFAULTS["tiny"]["select"]
    header, rows = md_rows(out)
    assert f"peak {select} ↑" in header and "kl-to-base at peak" in header and "hacked" in header
    table = read_table(out)
    for method in METHODS:
        hacked = expected_hacked(frames, method)
        assert sorted(filter(None, table[method]["hacked"].split(";"))) == hacked, method
        cell = rows[method][header.index("hacked")]
        assert (sorted(cell.split(", ")) if hacked else cell) == (hacked or "—"), method
        peaks = [judge.peak(frames[run_id(method, REWARD, s)], select, split) for s in SEEDS]
        assert table[method]["select"] == select
        assert float(table[method]["peak_mean"]) == pytest.approx(sum(p["value"] for p in peaks) / 2, rel=1e-12)
        assert float(table[method]["peak_kl_mean"]) == pytest.approx(sum(p["kl"] for p in peaks) / 2, rel=1e-12)
    # unregularised ROCM (FAST) hacks the tiny model's diversity within 200 NFE: the bold rule below is not vacuous
    assert any(expected_hacked(frames, m) for m in METHODS)


def test_hacked_rows_are_never_bold(runner_report):
    suite, _ = runner_report
    header, rows = md_rows(suite / "report")
    col = header.index("hacked")
    for method, cells in rows.items():
        if cells[col] != "—":
            assert not any(c.startswith("**") for c in cells), method
    clean = [cells for cells in rows.values() if cells[col] == "—"]
    assert any(c.startswith("**") for cells in clean for c in cells)  # the best among the others is bold
    first_metric = header.index(f"{REWARD} ↑")
    assert any(cells[first_metric].startswith("**") for cells in clean)


def test_ci_matches_hand_computation(runner_report):
    suite, _ = runner_report
    frames = run_frames(suite)
    split = split_of(frames)
    finals = []
    for s in SEEDS:
        ev = frames[run_id("rocm-kl", REWARD, s)]
        ev = ev[(ev["split"] == split) & (ev["metric"] == REWARD)]
        finals.append(float(ev.loc[ev["fraction"].idxmax(), "value"]))
    row = read_table(suite / "report")["rocm-kl"]
    assert float(row[f"{REWARD}_mean"]) == pytest.approx(sum(finals) / 2, rel=1e-12)
    # the half-width comes from the per-image scores (seeds, prompts and images): tests/test_report_stats.py
    # recomputes it; here, only that it is an interval over all three and wider than nothing
    assert row[f"{REWARD}_ci_over"] == "seeds, prompts, images" and float(row[f"{REWARD}_ci95"]) > 0
    assert row[f"{REWARD}_n"] == "2" and row["beta"] == "10" and row["budget"] == BUDGET


def test_incomplete_run_is_marked_and_counts_where_it_stopped(runner_suite, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(runner_suite, suite, ignore=shutil.ignore_patterns("report"))
    d = suite / "runs" / run_id("ddpo", REWARD, 1)
    (d / "summary.json").unlink()  # as if killed after its evaluation at 0.5
    rows = read_jsonl(d / "eval.jsonl")
    (d / "eval.jsonl").unlink()
    append_jsonl(d / "eval.jsonl", [r for r in rows if r["fraction"] < 1.0])
    build_report(suite)
    table = read_table(suite / "report")
    assert table["rocm-kl"]["status"] == "complete" and table["ddpo"]["status"].startswith("incomplete")
    split = split_of(run_frames(suite))
    finals = [r["value"] for r in read_jsonl(suite / "runs" / run_id("ddpo", REWARD, 0) / "eval.jsonl")
              if r["split"] == split and r["metric"] == REWARD and r["fraction"] == 1.0]
    finals += [r["value"] for r in rows if r["split"] == split and r["metric"] == REWARD and r["fraction"] == 0.5]
    assert float(table["ddpo"][f"{REWARD}_mean"]) == pytest.approx(sum(finals) / 2)
    assert f"| ddpo | brightness | 0 | {BUDGET} | 2 | incomplete" in (suite / "report" / "table.md").read_text()


def test_imports_no_torch(runner_suite, tmp_path):
    code = ("import sys; from pathlib import Path; from bench.analysis.report import build_report; "
            f"build_report(Path({str(runner_suite)!r}), Path({str(tmp_path)!r})); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------- the schema and the manifest

def test_manifest_keeps_every_command(runner_commands):
    suite, argvs = runner_commands
    data = read_json(suite / "manifest.json")
    assert data["schema"] == schema.SCHEMA_VERSION and data["protocol"] == PROTOCOL
    man = schema.Manifest.from_json(data)
    assert [c.argv for c in man.commands] == argvs and [c.seeds for c in man.commands] == [[0], [1]]
    assert man.seeds == SEEDS and man.budget["text"] == BUDGET and man.config["methods"] == METHODS
    assert man.created == man.commands[0].time <= man.commands[1].time
    for c in man.commands:
        assert c.time and c.device and set(c.versions) == {"python", "torch", "diffusers", "transformers", "peft"}
    assert man.to_json() == data  # what the runner wrote is exactly the typed record


def test_a_testbed_command_records_the_hash_of_every_shipped_weights_file():
    """Provenance: a command on the testbed (model or reward) names the sha256 of each weights file it could
    load; the report's index shows them and says so when two commands of one folder used different weights."""
    import hashlib

    from bench.analysis.report import manifest_lines
    from bench.core.compute import Budget
    from bench.run.config import SuiteConfig
    from bench.run.runner import command_record
    from bench.testbed.nets import WEIGHTS_DIR

    def suite(reward: str) -> SuiteConfig:
        return SuiteConfig(methods=["ddpo"], rewards=[reward], seeds=[0], budget=Budget.parse("100nfe"))

    on_testbed = command_record(suite("z(testbed-gold)"), ["bench", "run"])
    shipped = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert len(shipped) >= 6 and sorted(on_testbed.weights) == [p.name for p in shipped]
    assert all(on_testbed.weights[p.name] == hashlib.sha256(p.read_bytes()).hexdigest() for p in shipped)
    tiny = suite("brightness")
    tiny.model.name = "tiny"
    assert command_record(tiny, ["bench", "run"]).weights == {}

    other = dataclasses.replace(on_testbed, weights={**on_testbed.weights, "gold.safetensors": "0" * 64})
    runs = pd.DataFrame({"method": ["ddpo"], "reward": ["r"], "seed": [0], "model": ["testbed"], "budget": ["1"]})
    one = manifest_lines(schema.Manifest(config={}, commands=[on_testbed, on_testbed]), runs)
    two = manifest_lines(schema.Manifest(config={}, commands=[on_testbed, other]), runs)
    gold = on_testbed.weights["gold.safetensors"][:12]
    assert any(line.startswith("- **testbed weights**") and f"gold {gold}" in line and "different" not in line
               for line in one)
    assert any("**the commands used different weights**" in line for line in two)


def test_index_shows_budget_every_command_versions_and_seeds(runner_commands, runner_report):
    suite, argvs = runner_commands
    index = (suite / "report" / "index.md").read_text()
    man = schema.Manifest.from_json(read_json(suite / "manifest.json"))
    assert f"- **budget**: `{BUDGET}`" in index and "- **seeds**: 0, 1" in index and "- **model**: tiny" in index
    assert f"- **methods**: {', '.join(METHODS)}" in index and "- **commands** (2, oldest first):" in index
    for i, argv in enumerate(argvs, 1):
        assert f"  {i}. `{shlex.join(argv)}` — {man.commands[i - 1].time}" in index
    versions = next(line for line in index.splitlines() if line.startswith("- **versions**: "))
    assert all(f"{k} {v}" in versions for k, v in man.commands[0].versions.items())  # shared by both commands
    if man.commands[0].git:
        assert f"git `{man.commands[0].git}`" in index


def test_rows_written_by_the_runner_follow_the_schema(runner_suite):
    eval_fields = {f.name for f in dataclasses.fields(schema.EvalRow)}
    assert set(schema.EVAL_REQUIRED) | set(schema.EVAL_OPTIONAL) <= eval_fields
    for d in sorted((runner_suite / "runs").iterdir()):
        assert all(set(r) == eval_fields for r in read_jsonl(d / "eval.jsonl")), d.name
        assert all(set(schema.COUNTER_KEYS) | {"step", "budget_used"} <= set(r) for r in read_jsonl(d / "train.jsonl"))
        config = read_json(d / "config.json")
        assert schema.RunConfig.from_json(config).to_json() == config
        assert config["schema"] == schema.SCHEMA_VERSION and config["budget"]["text"] == BUDGET
        summary = read_json(d / "summary.json")
        assert schema.Summary.from_json(summary).to_json() == summary


def test_a_schema_0_manifest_is_resumed_with_its_command_kept(runner_commands, tmp_path):
    """A folder whose manifest was written before the schema (one command at its top level) is extended by a
    new command; the old command stays first in the history."""
    src, argvs = runner_commands
    suite = tmp_path / "suite"
    shutil.copytree(src, suite, ignore=shutil.ignore_patterns("report"))
    new = read_json(suite / "manifest.json")
    last = new["commands"][-1]
    write_json_atomic(suite / "manifest.json", {"argv": last["argv"], "config": new["config"], "created": last["time"],
                                                "device": last["device"], "git": last["git"], "protocol": PROTOCOL,
                                                "versions": last["versions"]})
    again = bench_run(*suite_args(suite, 1))  # every run complete: only the manifest changes
    man = schema.Manifest.from_json(read_json(suite / "manifest.json"))
    assert [c.argv for c in man.commands] == [argvs[1], again] and man.seeds == SEEDS


def test_every_published_manifest_is_read():
    """Folders once published in results/ were protocol-1 and protocol-2 folders of schema 0 (never rewritten; their
    manifests are kept in tests/data): each gives its budget and its commands, a hand-merged one ("merged_from") all
    of them; newer folders (and a local results/default from `make bench`) are in the current schema, whose commands
    are read as written."""
    old = sorted((REPO / "tests/data/old-manifests").glob("*.json")) + [REPO / "tests/data/protocol1-testbed/manifest.json"]
    manifests = sorted((REPO / "results").glob("**/manifest.json")) + old
    assert manifests and old
    for path in manifests:
        data = read_json(path)
        man = schema.Manifest.from_json(data, path)
        assert man.budget["text"] and man.seeds and man.protocol in (1, 2, 3), path
        if data.get("schema"):
            assert [c.argv for c in man.commands] == [c["argv"] for c in data["commands"]], path
            continue
        assert man.commands[-1].argv == data["argv"] and man.commands[-1].time == data["created"], path
        assert len(man.commands) == 1 + len(data.get("merged_from", [])), path
        assert man.commands[-1].versions == data["versions"] and man.commands[-1].git == data["git"], path


def test_a_newer_schema_is_refused_in_one_line():
    with pytest.raises(BenchError, match="schema 99, newer than") as e:
        schema.Manifest.from_json({"schema": 99, "config": {}})
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------- a published protocol-1 folder

def test_old_protocol_folder(tmp_path):
    """Two runs of the protocol-1 suite once published as results/testbed (train and heldout splits, no protocol
    field, no flops), kept in tests/data/protocol1-testbed."""
    src, suite = REPO / "tests" / "data" / "protocol1-testbed", tmp_path / "testbed"
    (suite / "runs").mkdir(parents=True)
    shutil.copy(src / "manifest.json", suite)
    for name in ("rocm-kl__testbed-pref__seed1", "rocm-none__testbed-pref__seed1"):
        shutil.copytree(src / "runs" / name, suite / "runs" / name)
    build_report(suite)
    out = suite / "report"
    index = (out / "index.md").read_text()
    assert "> **Warning: protocol 1.**" in index and "first 16 prompts of each split" in index
    assert "- **protocol**: 1" in index and "reported split, **heldout**" in index
    assert "- **budget**: `15000nfe`" in index and "- **seeds**: 0, 1, 2" in index  # from config, schema 0
    assert "- **commands** (1, oldest first):" in index and "bench run --model testbed" in index
    with Image.open(out / "frontier_testbed-pref.png") as im:
        im.verify()
    header, rows = md_rows(out)
    assert "peak testbed-gold ↑" in header  # the testbed's selection metric, never the trained testbed-pref
    hacked = rows["rocm-none"][header.index("hacked")].split(", ")
    assert "testbed-gold" in hacked and not any(c.startswith("**") for c in rows["rocm-none"])
    assert rows["rocm-kl"][header.index("hacked")] == "—"
    # the only row not flagged hacked: it beats no other unhacked row, so nothing is bold (best of one is no finding)
    assert not rows["rocm-kl"][header.index("testbed-pref ↑")].startswith("**")


# -------------------------------------------------------------------- hand-made folders: tolerance of odd files

def write_suite(root: Path) -> Path:
    """A minimal protocol-1 folder (no manifest protocol, no stderr or flops columns): 1 method x 1 seed."""
    d = root / "runs" / run_id("rocm-kl", REWARD, 0)
    write_json_atomic(d / "config.json", {"method": "rocm-kl", "reward": REWARD, "seed": 0,
                                          "budget": {"kind": "nfe", "amount": 100.0, "text": "100nfe"}})
    for step, f in enumerate((0.0, 1.0)):
        append_jsonl(d / "eval.jsonl", [{"step": step, "fraction": f, "nfe": 100 * f, "seconds": f, "split": "heldout",
                                         "metric": m, "higher_is_better": hib, "value": v + f, "version": "1"}
                                        for m, hib, v in ((REWARD, True, 0.5), ("kl-to-base", False, 0.0))])
    write_json_atomic(d / "summary.json", {"nfe": 100, "seconds": 1.0})
    return root


def test_corrupt_config_is_a_bench_error(tmp_path):
    suite = write_suite(tmp_path)
    (suite / "runs" / run_id("rocm-kl", REWARD, 0) / "config.json").write_text('{"method": "ddpo", "rew')
    with pytest.raises(BenchError, match="corrupt results file .*config.json") as e:
        build_report(suite)
    assert "\n" not in str(e.value)


def test_torn_last_eval_line_is_tolerated_and_missing_columns_are_too(tmp_path):
    suite = write_suite(tmp_path)
    with open(suite / "runs" / run_id("rocm-kl", REWARD, 0) / "eval.jsonl", "a") as f:
        f.write('{"step": 3, "fraction": 1.0, "split": "heldout", "metric": "bright')
    written = build_report(suite)
    row = read_table(suite / "report")["rocm-kl"]
    assert float(row[f"{REWARD}_mean"]) == pytest.approx(1.5) and row["hacked"] == ""
    assert f"frontier_{REWARD}.png skipped" in (suite / "report" / "index.md").read_text()  # nothing untrained
    assert "no manifest.json" in (suite / "report" / "index.md").read_text()
    assert f"frontier_{REWARD}.png" not in {p.name for p in written}


def test_empty_or_unevaluated_suite_is_a_bench_error(tmp_path):
    with pytest.raises(BenchError, match="no runs folder"):
        build_report(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(BenchError, match="no runs in"):
        build_report(tmp_path)
    write_json_atomic(tmp_path / "runs" / "a__b__seed0" / "config.json", {"method": "a", "reward": "b", "seed": 0})
    with pytest.raises(BenchError, match="no evaluation rows"):
        build_report(tmp_path)


def test_interrupted_attempts_ignored_and_missing_samples_noted(tmp_path):
    suite = write_suite(tmp_path)
    junk = suite / "runs" / (run_id("rocm-kl", REWARD, 0) + ".interrupted-1")
    junk.mkdir()
    (junk / "config.json").write_text("not json")
    (suite / "runs" / "being-created").mkdir()
    out = tmp_path / "elsewhere"
    written = build_report(suite, out)
    assert all(p.parent == out for p in written)
    index = (out / "index.md").read_text()
    assert "no sample grids in `runs/rocm-kl__brightness__seed0/samples`" in index
    assert "skipped `runs/being-created`: no config.json" in index


def test_tex_escape():
    assert tex_escape("a_b 5% & #1 ± – —") == r"a\_b 5\% \& \#1 $\pm$ -- ---"


def test_mean_ci_text_has_decimals_the_ci_needs_and_no_more():
    from bench.analysis.table import pm

    assert pm(65.7, 1.7) == "65.7 ± 1.7"
    assert pm(0.236, 0.004) == "0.236 ± 0.004"
    assert pm(0.5, 1e-9) == "0.500 ± 0.000"  # seeds agreeing up to float noise: not 0.500000 ± 0.000000
    assert pm(3.0, float("nan")) == "3.00"  # one seed: no CI
    assert pm(float("nan"), 0.1) == "–"


def test_x_axis_is_the_budget_counter():
    from bench.analysis.report import x_column

    ev = pd.DataFrame({"flops": [1e12, 2e12]})
    assert x_column(pd.DataFrame({"budget_kind": ["nfe", "nfe"]}), ev) == "nfe"
    assert x_column(pd.DataFrame({"budget_kind": ["flops", "flops"]}), ev) == "flops"
    assert x_column(pd.DataFrame({"budget_kind": ["flops"]}), ev.assign(flops=math.nan)) == "seconds"
    assert x_column(pd.DataFrame({"budget_kind": ["nfe", "seconds"]}), ev) == "seconds"


# ------------------------------------------------------------------------------- bench.analysis.judge on known answers

def frame(points: dict[float, dict[str, tuple[float, float]]], split: str = "test") -> pd.DataFrame:
    """{fraction: {metric: (value, stderr)}} -> eval rows; "fid" and "kl-to-base" are lower-is-better."""
    return pd.DataFrame([{"fraction": f, "split": split, "metric": m, "value": v, "stderr": se,
                          "higher_is_better": m not in ("fid", "kl-to-base")}
                         for f, ms in points.items() for m, (v, se) in ms.items()])


BASE = {"r": (1.0, 0.1), "gold": (0.80, 0.01), "align": (0.5, 0.01), "fid": (10.0, 0.0), "div": (2.0, 0.0),
        "kl-to-base": (0.0, 0.0)}


def test_hacking_flags_metrics_worse_than_their_noise_while_the_reward_rises():
    # gold: -0.03 > 1.96·√2·0.01 = 0.0277 (flag); align: -0.02 < 0.0277 (no); fid (lower is better, no stderr):
    # +0.6 > 5% of 10 (flag); div (no stderr): -0.08 < 5% of 2 (no)
    last = {"r": (2.0, 0.1), "gold": (0.77, 0.01), "align": (0.48, 0.01), "fid": (10.6, 0.0), "div": (1.92, 0.0),
            "kl-to-base": (3.0, 0.1)}
    ev = frame({0.0: BASE, 0.5: {**BASE, "gold": (0.5, 0.01)}, 1.0: last})
    assert judge.hacking(ev, "r", "test") == {"gold": True, "align": False, "fid": True, "div": False}
    assert judge.hacking(ev, "r", "test", z=3.0)["gold"] is False  # 0.03 < 3·√2·0.01 = 0.042
    assert judge.hacking(ev, "r", "test", rel_tol=0.1)["fid"] is False
    assert judge.hacking(ev, "r", "train") == {}  # no rows on that split


def test_hacking_needs_the_reward_to_improve_and_a_trained_model():
    worse = {**BASE, "gold": (0.5, 0.01)}
    assert not any(judge.hacking(frame({0.0: BASE, 1.0: {**worse, "r": (0.9, 0.1)}}), "r", "test").values())
    assert not any(judge.hacking(frame({0.0: BASE}), "r", "test").values())  # only the base model evaluated
    assert not any(judge.hacking(frame({1.0: worse}), "r", "test").values())  # no base model to compare with
    # a resumed run's repeated evaluation counts with the row written last
    ev = pd.concat([frame({0.0: BASE, 1.0: {**worse, "r": (2.0, 0.1)}}), frame({1.0: {**BASE, "r": (2.0, 0.1)}})])
    assert judge.hacking(ev, "r", "test")["gold"] is False


def test_peak_is_the_best_point_in_the_metric_direction_with_its_kl():
    ev = frame({0.0: BASE, 0.5: {**BASE, "gold": (0.9, 0.01), "fid": (9.0, 0.0), "kl-to-base": (1.0, 0.1)},
                1.0: {**BASE, "gold": (0.9, 0.01), "fid": (12.0, 0.0), "kl-to-base": (4.0, 0.1)}})
    assert judge.peak(ev, "gold", "test") == {"value": 0.9, "fraction": 0.5, "kl": 1.0}  # a tie: the earliest
    assert judge.peak(ev, "fid", "test") == {"value": 9.0, "fraction": 0.5, "kl": 1.0}  # lower is better
    assert judge.peak(ev, "align", "test") == {"value": 0.5, "fraction": 0.0, "kl": 0.0}  # never improved: base
    assert all(math.isnan(v) for v in judge.peak(ev, "missing", "test").values())


def test_reported_split_and_selection_metric():
    assert judge.reported_split(["train", "validation", "test"]) == "test"
    assert judge.reported_split(["train", "heldout"]) == "heldout"
    assert judge.reported_split(["train", "validation"]) == "validation"
    assert judge.reported_split(["train"]) is None
    assert judge.selection_metric("pref", ["pref", "gold", "fid", "kl-to-base"], "gold") == "gold"
    assert judge.selection_metric("gold", ["gold", "fid", "kl-to-base"], "gold") == "fid"  # never the trained one
    assert judge.selection_metric("pref", ["pref", "kl-to-base"], "gold") is None
