"""Results on disk: atomic writes, append-only logs, and readers that tell a corrupt file from a crash.

Imports no torch: the report reads results through this module only.

Layout of one suite folder (``bench run --out SUITE``)::

    SUITE/manifest.json                 suite arguments, package versions, git revision, device, budget
    SUITE/runs/<run_id>/config.json     the resolved config of one run (method x reward x seed), see RunConfig
    SUITE/runs/<run_id>/train.jsonl     one row per outer training step (append-only), see TRAIN_KEYS
    SUITE/runs/<run_id>/eval.jsonl      one row per (evaluation point, split, metric) (append-only), see EVAL_KEYS
    SUITE/runs/<run_id>/samples/frac{f:.2f}.png   an image grid of the reported split at each evaluation point
    SUITE/runs/<run_id>/summary.json    written last, atomically: its presence means the run completed
    SUITE/runs/<run_id>.interrupted-<k>/  an interrupted attempt, moved aside (never deleted) when it is redone

``run_id`` is ``{method}__{reward}__seed{seed}``.

Rows of train.jsonl carry the compute counters (see bench.compute.ComputeMeter.counters) on every row:
``step`` (1-based outer step), ``nfe`` (denoiser evaluations per sample, a backward counted as 2),
``nfe_forward``, ``nfe_backward``, ``flops`` (every training forward and backward: denoiser, decoder, reward,
text encoder) with its parts ``flops_denoiser``, ``flops_decoder``, ``flops_reward``, ``flops_text``,
``nfe_eq`` (flops in units of one policy denoiser forward), ``reward_calls`` (images scored), ``images``
(images sampled), ``seconds`` (device time of training work), ``budget_used`` (fraction of the budget spent),
plus the method's own scalar logs (``reward_mean``, ``loss``, ``divergence``, ``per_prompt_share``, ...).

Rows of eval.jsonl: ``step``, ``fraction`` (the nominal evaluation point k/points: 0.0 is the base model, 1.0
the end), ``budget_used`` (the fraction really spent), ``nfe``, ``flops``, ``nfe_eq``, ``seconds`` (compute
spent when it was taken), ``split`` ("train", "validation" or "test"; protocol-1 folders have "heldout"),
``metric``, ``version``, ``higher_is_better`` (bool), ``value`` (mean over images), ``stderr`` (standard
error over images; a set metric's own estimate, or 0), ``n`` (images), ``n_prompts`` and ``n_images`` (the
prompts and images of the split that were evaluated).

Manifests and run configs carry ``protocol`` (docs/protocol.md; absent in protocol-1 folders).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from bench.errors import BenchError

TRAIN_KEYS = ("step", "nfe", "nfe_forward", "nfe_backward", "reward_calls", "images", "seconds", "budget_used")
EVAL_KEYS = ("step", "fraction", "nfe", "seconds", "split", "metric", "version", "higher_is_better", "value",
             "stderr", "n")  # always present; protocol 2 adds budget_used, flops, nfe_eq, n_prompts, n_images


def run_id(method: str, reward: str, seed: int) -> str:
    return f"{method}__{reward}__seed{seed}"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse every row."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Readers never see half a file (see write_bytes_atomic)."""
    write_bytes_atomic(path, (json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append whole lines and fsync; a crash can at worst leave one truncated last line (see read_jsonl)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(_clean(r), sort_keys=True) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"missing results file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"corrupt results file {path}: {e.msg if hasattr(e, 'msg') else e}") from None


def read_jsonl(path: Path) -> list[dict]:
    """Read an append-only log. A truncated *last* line is what a crash mid-append leaves: it is dropped.
    A bad line anywhere else means the file was damaged, and that is an error, not something to guess around."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            rows.append(row)
        except ValueError:
            if i == len(lines) - 1:
                continue  # torn final append from a crash
            raise BenchError(f"corrupt results file {path}: line {i + 1} is not a JSON object") from None
    return rows
