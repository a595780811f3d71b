"""Standard benchmark prompt sets from public Hugging Face datasets: `bench fetch drawbench parti hpdv2` downloads
their files into the hub cache (the only network access); `load_prompts` reads them from there offline, and a
set not yet fetched is a one-line BenchError naming the fetch command.

- `drawbench`: sayakpaul/drawbench, `DrawBench Prompts - Sheet1.csv` (columns Prompts, Category): 200 prompts
  in 11 categories;
- `parti`: nateraw/parti-prompts, `PartiPrompts.tsv` (columns Prompt, Category, Challenge, Note): 1,632 rows in
  12 categories;
- `hpdv2`: zhwang/HPDv2, `benchmark/{anime,concept-art,paintings,photo}.json` (JSON lists of prompts, as the
  hpsv2 package's `benchmark_prompts` reads them): 3,200 prompts in 4 styles.

Splits, 40% test, 10% validation and the rest train in every group, are fixed by SPLIT_SEED: within every group
(category or style) the distinct prompts, in file order, are shuffled by `random.Random(f"{seed}:{name}:{group}")`,
then the first 40% (rounded) go to test, the next 10% (rounded, at least 1 when the group has 3 or more) to
validation and the rest to train; a prompt seen in two groups stays in the first. Every group is thus represented
in every split in proportion, and the splits are disjoint. (`random.Random` seeded with a string is the same in
every Python process: it hashes the string with SHA-512, not with the per-process `hash`.)
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError

SPLIT_SEED = 0
FRACTIONS = {"test": 0.4, "validation": 0.1}  # the rest is train


@dataclass(frozen=True)
class HubPromptSet:
    """Where a benchmark's prompts live in a hub dataset and how to read them."""

    repo_id: str  # Hugging Face dataset id
    files: tuple[str, ...]  # paths inside the dataset repo
    kind: str  # "csv" / "tsv" (one prompt per row, `column`, grouped by `group`) or "json-list" (group = file stem)
    column: str = ""
    group: str = ""


HUB_PROMPT_SETS: dict[str, HubPromptSet] = {
    "drawbench": HubPromptSet("sayakpaul/drawbench", ("DrawBench Prompts - Sheet1.csv",), "csv", "Prompts", "Category"),
    "parti": HubPromptSet("nateraw/parti-prompts", ("PartiPrompts.tsv",), "tsv", "Prompt", "Category"),
    "hpdv2": HubPromptSet("zhwang/HPDv2", tuple(f"benchmark/{s}.json" for s in ("anime", "concept-art", "paintings",
                                                                                "photo")), "json-list"),
}


def _download(spec: HubPromptSet, filename: str, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download

    from bench.core.hub_cache import cache_dir

    return Path(hf_hub_download(spec.repo_id, filename, repo_type="dataset", cache_dir=cache_dir(),
                                local_files_only=offline))


def fetch_prompt_set(name: str) -> list[Path]:
    """Download a set's files into the hub cache (needs the network)."""
    spec = HUB_PROMPT_SETS[name]
    return [_download(spec, f, offline=False) for f in spec.files]


def read_grouped(name: str) -> list[tuple[str, str]]:
    """(prompt, group) pairs of a fetched set, in file order, read from the cache only."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from bench.core.hub_cache import cache_dir

    spec, pairs = HUB_PROMPT_SETS[name], []
    for filename in spec.files:
        try:
            path = _download(spec, filename, offline=True)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            raise BenchError(f"prompt set '{name}' ({spec.repo_id}/{filename}) is not in the Hugging Face cache "
                             f"({cache_dir()}); run: bench fetch {name}") from None
        text = path.read_text(encoding="utf-8-sig")
        try:
            if spec.kind == "json-list":
                items = json.loads(text)
                if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
                    raise ValueError("expected a JSON list of strings")
                pairs += [(p, Path(filename).stem) for p in items]
            else:
                rows = csv.DictReader(io.StringIO(text), delimiter="\t" if spec.kind == "tsv" else ",")
                pairs += [(row[spec.column], row[spec.group]) for row in rows]
        except (ValueError, KeyError, TypeError) as e:
            raise BenchError(f"prompt set '{name}': cannot read {path} ({e}); run: bench fetch {name}") from None
    pairs = [(" ".join(p.split()), g.strip()) for p, g in pairs if p and p.strip()]
    if not pairs:
        raise BenchError(f"prompt set '{name}': no prompts in {spec.repo_id}; run: bench fetch {name}")
    return pairs


def stratified_splits(pairs: list[tuple[str, str]], name: str, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """(prompt, group) pairs -> disjoint train / validation / test, stratified by group (see the module doc)."""
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for p, g in pairs:
        if p not in seen:
            seen.add(p)
            groups.setdefault(g, []).append(p)
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for g, prompts in groups.items():
        prompts = list(prompts)
        random.Random(f"{seed}:{name}:{g}").shuffle(prompts)
        n_test = round(FRACTIONS["test"] * len(prompts))
        n_val = max(round(FRACTIONS["validation"] * len(prompts)), 1 if len(prompts) >= 3 else 0)
        splits["test"] += prompts[:n_test]
        splits["validation"] += prompts[n_test:n_test + n_val]
        splits["train"] += prompts[n_test + n_val:]
    return splits


def load_hub_split(name: str, split: str) -> list[str]:
    return stratified_splits(read_grouped(name), name)[split]
