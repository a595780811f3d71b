"""Prompt sets: our offline `animal-activities` (held-out animals and activities), and the hub benchmarks
`drawbench`, `parti`, `hpdv2` read from a local fake of the hub cache's dataset layout
(`datasets--org--name/snapshots/<commit>/<file>`, as `bench fetch` leaves them)."""

from __future__ import annotations

import json

import pytest

from bench.core.errors import BenchError
from bench.prompts import animal_activities as aa
from bench.prompts.hub import HUB_PROMPT_SETS, stratified_splits
from bench.prompts.sets import SPLITS, load_prompts
from tests import tiny_hub


def words(prompts, vocabulary):
    return {w for p in prompts for w in vocabulary if f" {w}" in f" {p}"}


def test_animal_activities_hold_out_animals_and_activities():
    s = {split: load_prompts("animal-activities", split) for split in SPLITS}
    assert (len(s["train"]), len(s["validation"]), len(s["test"])) == (640, 40, 40)
    assert sum(map(len, s.values())) >= 200 and all(len(set(v)) == len(v) for v in s.values())
    assert not (set(s["train"]) & set(s["validation"]) or set(s["train"]) & set(s["test"])
                or set(s["validation"]) & set(s["test"]))
    train_animals = {p.split(" ", 2)[1] for p in s["train"]}
    train_activities = {p.split(" ", 2)[2] for p in s["train"]}
    assert len(train_animals) == 40 and len(train_activities) == 16
    held = {}
    for split in ("validation", "test"):
        animals = {p.split(" ", 2)[1] for p in s[split]} - train_animals
        activities = {p.split(" ", 2)[2] for p in s[split]} - train_activities
        assert len(animals) == 5 and len(activities) == 2
        held[split] = animals | activities
        # the three kinds: unseen animal only, unseen activity only, both
        kinds = [(p.split(" ", 2)[1] in animals, p.split(" ", 2)[2] in activities) for p in s[split]]
        assert (kinds.count((True, False)), kinds.count((False, True)), kinds.count((True, True))) == (15, 15, 10)
    assert not held["validation"] & held["test"]
    assert aa.build_splits() == aa.build_splits() and aa.build_splits(1) != aa.build_splits()
    assert aa.prompt("otter", "rowing a boat") == "an otter rowing a boat"


FAKE = {  # per set: {file: content}, small but with the real formats and column names
    "drawbench": {"DrawBench Prompts - Sheet1.csv":
                  "Prompts,Category,Note\n" + "".join(f'"prompt {c} {i}, with a comma",{c},\n'
                                                      for c in ("Colors", "Count", "Text") for i in range(10))
                  + "a single one,Reddit,\n"},
    "parti": {"PartiPrompts.tsv": "Prompt\tCategory\tChallenge\tNote\n" + "".join(
        f"parti {c} {i}\t{c}\tBasic\t\n" for c in ("Animals", "Vehicles") for i in range(20))
        + "parti Animals 0\tArts\tBasic\t\n"},  # a prompt repeated in another category
    "hpdv2": {f"benchmark/{s}.json": json.dumps([f"{s} prompt {i}" for i in range(20)])
              for s in ("anime", "concept-art", "paintings", "photo")},
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def put(cache, name):
    folder = tiny_hub.snapshot_dir(cache, HUB_PROMPT_SETS[name].repo_id, repo_type="dataset")
    for filename, text in FAKE[name].items():
        (folder / filename).parent.mkdir(parents=True, exist_ok=True)
        (folder / filename).write_text(text)


@pytest.mark.parametrize("name", list(HUB_PROMPT_SETS))
def test_hub_sets_fail_offline_with_the_fetch_command(cache, name):
    for split in SPLITS:
        with pytest.raises(BenchError, match=f"run: bench fetch {name}") as e:
            load_prompts(name, split)
        assert "\n" not in str(e.value) and "not in the Hugging Face cache" in str(e.value)


@pytest.mark.parametrize("name, n, groups", [("drawbench", 31, 4), ("parti", 40, 2), ("hpdv2", 80, 4)])
def test_hub_sets_load_from_the_cache_with_stratified_splits(cache, name, n, groups):
    put(cache, name)
    s = {split: load_prompts(name, split) for split in SPLITS}
    everything = [p for v in s.values() for p in v]
    assert len(everything) == len(set(everything)) == n  # disjoint, duplicates (parti's "Arts" row) dropped
    assert s == {split: load_prompts(name, split) for split in SPLITS}  # fixed: the same on every load
    if name == "drawbench":
        assert "prompt Colors 0, with a comma" in everything and "a single one" in s["train"]
        per_group = 10
    else:
        per_group = 20
    for split, frac in (("test", 0.4), ("validation", 0.1)):
        assert len(s[split]) == round(frac * per_group) * (groups if name != "drawbench" else 3)


def test_a_suite_on_an_unfetched_set_fails_before_running(cache):
    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.run.config import SuiteConfig, apply_sets, validate

    suite = SuiteConfig(methods=["ddpo"], rewards=["brightness"], seeds=[0], budget=Budget.parse("1000nfe"),
                        model=ModelConfig(name="tiny"))
    apply_sets(suite, ["prompts.set=parti"])
    with pytest.raises(BenchError, match="run: bench fetch parti"):
        validate(suite)


def test_stratified_splits_shuffle_within_groups_by_seed():
    pairs = [(f"p{i}", "ab"[i % 2]) for i in range(40)]
    a, b = stratified_splits(pairs, "x", seed=0), stratified_splits(pairs, "x", seed=1)
    assert a != b and sorted(sum(a.values(), [])) == sorted(sum(b.values(), []))
    assert sum(p in {f"p{i}" for i in range(0, 40, 2)} for p in a["test"]) == 8  # 40% of each group


def test_bench_fetch_downloads_each_file_of_the_dataset_into_the_cache(cache, monkeypatch):
    """`bench fetch drawbench parti hpdv2` asks the hub for exactly the files the loaders read (a fake download
    writes them where the real one would), after which the sets load offline."""
    import huggingface_hub
    from typer.testing import CliRunner

    from bench.cli.main import app

    asked = []

    def fake_download(repo_id, filename, repo_type=None, cache_dir=None, local_files_only=False):
        if local_files_only:
            raise AssertionError("fetch must download, not look in the cache")
        asked.append((repo_id, filename, repo_type))
        name = next(n for n, spec in HUB_PROMPT_SETS.items() if spec.repo_id == repo_id)
        path = tiny_hub.snapshot_dir(cache_dir, repo_id, repo_type="dataset") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(FAKE[name][filename])
        return str(path)

    with monkeypatch.context() as m:
        m.setattr(huggingface_hub, "hf_hub_download", fake_download)
        result = CliRunner().invoke(app, ["fetch", "drawbench", "parti", "hpdv2"])
    assert result.exit_code == 0, result.output
    assert asked == [(spec.repo_id, f, "dataset") for spec in HUB_PROMPT_SETS.values() for f in spec.files]
    assert all(load_prompts(name, "test") for name in HUB_PROMPT_SETS)
