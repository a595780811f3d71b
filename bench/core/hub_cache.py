"""Where hub weights live on this machine, and the one function that downloads them (`bench fetch`).

Everything else runs offline: weights are looked up in the local cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
~/.cache/huggingface/hub, read at call time) and a missing one is a one-line `BenchError` naming the `bench fetch`
command that downloads it. Models (bench/models/hub.py), rewards (rewards/weights.py) and prompt sets
(bench/prompts/hub.py) all resolve the cache here.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.core.errors import BenchError


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def missing_weights(fetch_name: str, what: str) -> BenchError:
    """The one-line error for weights absent from the cache, naming the command that fetches them."""
    return BenchError(f"weights for '{fetch_name}' ({what}) are not in the Hugging Face cache ({cache_dir()}); "
                      f"run: bench fetch {fetch_name}")


def local_snapshot(repo_id: str, fetch_name: str) -> Path:
    """The cached snapshot folder of `repo_id`, never downloading; a clear error names the fetch command."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise missing_weights(fetch_name, repo_id) from None


def fetch(repo_id: str, patterns: list[str] | None) -> Path:
    """Download (or update) one repository's files into the cache. The only network access of the suite."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, cache_dir=cache_dir(), allow_patterns=patterns))
