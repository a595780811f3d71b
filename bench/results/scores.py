"""Per-image scores: every evaluation point's score of every image for every per-image metric, so that any
statistic can be recomputed later (bench/analysis/stats.py draws its intervals from them).

One file per evaluation, RUN/scores/step<NNNNNN>.npz (numpy, written atomically): `fractions` (the budget fractions
this evaluation stands for), `budget_used`, and for every split and metric an array `<split>/<metric>` of shape
(prompts, images per prompt), float64, rows in the order of `<split>/prompts` (the split's evaluated prompts).
Image k of prompt p comes from the same evaluation noise in every run and at every point, so arrays of different
runs line up image for image (paired). Set metrics (FID, diversity) have no per-image score and are not here.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError
from bench.results.io import write_bytes_atomic

FOLDER = "scores"


def write_scores(run_dir: Path, step: int, fractions: list[float], budget_used: float,
                 scores: dict[str, dict[str, np.ndarray]], prompts: dict[str, list[str]]) -> Path:
    """Write one evaluation's per-image scores (see the module doc); returns the file."""
    arrays: dict[str, np.ndarray] = {"fractions": np.asarray(fractions, dtype=float),
                                     "budget_used": np.asarray(budget_used, dtype=float)}
    for split, by_metric in scores.items():
        arrays[f"{split}/prompts"] = np.asarray(prompts[split], dtype=str)
        for metric, values in by_metric.items():
            arrays[f"{split}/{metric}"] = np.asarray(values, dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(run_dir) / FOLDER / f"step{step:06d}.npz"
    write_bytes_atomic(path, buf.getvalue())
    return path


def read_scores(run_dir: Path) -> list[dict]:
    """Every evaluation of a run, in step order: {"step", "fractions", "budget_used", "scores": {split: {metric:
    (P, I) array}}, "prompts": {split: [...]}}. A file that cannot be read is a one-line BenchError."""
    out = []
    for path in sorted((Path(run_dir) / FOLDER).glob("step*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                entry = {"step": int(re.findall(r"\d+", path.stem)[0]), "fractions": data["fractions"].tolist(),
                         "budget_used": float(data["budget_used"]), "scores": {}, "prompts": {}}
                for key in data.files:
                    if "/" not in key:
                        continue
                    split, name = key.split("/", 1)
                    if name == "prompts":
                        entry["prompts"][split] = data[key].tolist()
                    else:
                        entry["scores"].setdefault(split, {})[name] = data[key]
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise BenchError(f"corrupt per-image scores {path} ({type(e).__name__}); rerun the run to rewrite it") \
                from None
        out.append(entry)
    return out


def at_fraction(entries: list[dict], fraction: float) -> dict | None:
    """The evaluation that stands for budget `fraction` (within 1e-9), or None."""
    for e in reversed(entries):  # a resumed run may have written one twice: the later counts
        if any(abs(f - fraction) < 1e-9 for f in e["fractions"]):
            return e
    return None
