"""Experiment trackers for `bench run --log-with tensorboard,wandb,trackio`: copies of what the runner writes.

The run folder's own files (train.jsonl, eval.jsonl, samples/, summary.json; bench/results/schema.py) stay the source of
truth. A tracker only mirrors them, offline, into the run folder:

    tensorboard   RUN_DIR/tensorboard/         (`tensorboard --logdir SUITE/runs` compares every run)
    wandb         RUN_DIR/wandb/offline-run-*  (mode="offline"; `wandb sync` uploads it later, if you wish)
    trackio       SUITE/trackio/               (local SQLite; TRACKIO_DIR, unless already set; `trackio show`)

What is logged, with the outer training step as the step of every value:
    train/<key>                  every numeric field of a train.jsonl row: loss, reward_mean, divergence, ...,
                                 and the compute used so far (nfe, flops, seconds, budget_used, ...)
    eval/<split>/<metric>        each metric's value on each evaluated split at each evaluation point
    eval/budget_used             the fraction of the budget spent at that evaluation point
    eval_vs_budget/<split>/<metric>  (TensorBoard) the same values with the step set to the budget used in per
                                 mille (0 … 1000): runs of different methods line up on one compute axis
    samples/<split>              an image grid of that split's first eval.grid_images images per point
    config                       the run's config.json (text; wandb and trackio take it as the run config)

A tracker that fails (a full disk, a library error) prints one warning and is dropped for the rest of the
run; the run itself and its files are never affected.
"""

from __future__ import annotations

import io
import json
import os
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from bench.core.errors import BenchError, unknown_name

PROJECT = "cm-rlhf-bench"


class Tracker(Protocol):
    """One tracker library for one run (built by TRACKERS[name][0](run_dir, config)): scalars and images at a
    step, then close."""

    free_steps: bool
    """Values may be logged at any step, in any order (TensorBoard); wandb and trackio need steps that never
    decrease, so the eval_vs_budget/ axis is theirs only as the eval/budget_used value."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def images(self, values: dict[str, np.ndarray], step: int) -> None:
        """`values`: tag -> (H, W, 3) uint8 image."""

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    free_steps = True

    def __init__(self, run_dir: Path, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, sort_keys=True) + "\n```", 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def images(self, values: dict[str, np.ndarray], step: int) -> None:
        for tag, image in values.items():
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class StepLogger:
    """wandb and trackio: a `run` with log(values, step) and finish(), images as the library's `Image`."""

    free_steps = False

    def __init__(self, library: Any, run: Any) -> None:
        self.library, self.run = library, run

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def images(self, values: dict[str, np.ndarray], step: int) -> None:
        self.run.log({tag: self.library.Image(image) for tag, image in values.items()}, step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def wandb_offline(run_dir: Path, config: dict) -> StepLogger:
    import wandb

    return StepLogger(wandb, wandb.init(project=PROJECT, name=run_dir.name, group=run_dir.parent.parent.name,
                                        dir=str(run_dir), mode="offline", config=config))


def trackio_local(run_dir: Path, config: dict) -> StepLogger:
    os.environ.setdefault("TRACKIO_DIR", str(run_dir.parent.parent / "trackio"))  # read when trackio is imported
    import trackio

    return StepLogger(trackio, trackio.init(project=PROJECT, name=run_dir.name, group=run_dir.parent.parent.name,
                                            config=config, embed=False))


# name -> (builder(run_dir, config) -> Tracker, module that must be importable, pip command that installs it)
TRACKERS: dict[str, tuple[Callable[[Path, dict], Tracker], str, str]] = {
    "tensorboard": (TensorBoard, "tensorboard", "pip install tensorboard  (or: pip install 'cm-rlhf-bench[trackers]')"),
    "wandb": (wandb_offline, "wandb", "pip install wandb"),
    "trackio": (trackio_local, "trackio", "pip install trackio"),
}


def parse_log_with(text: str | None) -> tuple[str, ...]:
    """'tensorboard,wandb' -> ('tensorboard', 'wandb'), checked before anything runs: a name that is not a tracker
    or whose library is not installed is a one-line error."""
    names = tuple(dict.fromkeys(t.strip() for t in (text or "").split(",") if t.strip()))
    if names == ("none",):
        return ()
    for name in names:
        if name not in TRACKERS:
            raise unknown_name("tracker (--log-with)", name, list(TRACKERS))
        _, module, pip = TRACKERS[name]
        if find_spec(module) is None:
            raise BenchError(f"--log-with {name}: the {module} package is not installed; run: {pip}")
    return names


def _warn(name: str, error: BaseException) -> None:
    print(f"warning: {name} tracker failed ({type(error).__name__}: {error}); it is off for the rest of this run, "
          f"the run's own files are unaffected", file=sys.stderr)


def _grid_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # (H, W, 3) uint8


class RunLog:
    """Every tracker of one run, opened lazily at the first value (after config.json is written) and closed by
    `close` (or the `with` block). With no tracker names every call does nothing."""

    def __init__(self, names: tuple[str, ...] | list[str], run_dir: Path) -> None:
        self.names, self.run_dir = tuple(names), Path(run_dir)
        self.trackers: dict[str, Tracker] | None = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _open(self) -> dict[str, Tracker]:
        if self.trackers is None:
            self.trackers = {}
            path = self.run_dir / "config.json"
            config = json.loads(path.read_text()) if path.exists() else {}
            for name in self.names:
                try:
                    self.trackers[name] = TRACKERS[name][0](self.run_dir, config)
                except Exception as e:  # noqa: BLE001 - a tracker never stops a run
                    _warn(name, e)
        return self.trackers

    def _each(self, call) -> None:
        trackers = self._open() if self.names else {}
        for name, tracker in list(trackers.items()):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001
                _warn(name, e)
                del trackers[name]

    def train(self, row: dict) -> None:
        """One train.jsonl row: its numeric fields as train/<key> at its step."""
        if not self.names:
            return
        values = {f"train/{k}": float(v) for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._each(lambda t: t.scalars(values, int(row["step"])))

    def evaluation(self, step: int, budget_used: float, rows: list[dict], images: dict, grid_images: int) -> None:
        """One evaluation point: bench.run.evaluate's rows (split, metric, value), and each split's images
        ((B, 3, H, W) in [0, 1]), of which the first `grid_images` make its grid, as in the run's samples/."""
        if not self.names:
            return
        from bench.run.evaluate import image_grid_png

        values = {f"eval/{r['split']}/{r['metric']}": float(r["value"]) for r in rows
                  if isinstance(r.get("value"), (int, float)) and not isinstance(r["value"], bool)}
        on_budget = {"eval_vs_budget/" + k[len("eval/"):]: v for k, v in values.items()}
        per_mille = int(round(budget_used * 1000))
        try:  # (H, W, 3) uint8 grids, the same pictures as samples/frac*.png
            grids = {f"samples/{split}": _grid_array(image_grid_png(imgs[:grid_images]))
                     for split, imgs in images.items() if grid_images > 0}
        except Exception as e:  # noqa: BLE001 - a tracker never stops a run
            print(f"warning: the trackers' image grids failed ({type(e).__name__}: {e}); scalars are still logged",
                  file=sys.stderr)
            grids = {}
        self._each(lambda t: t.scalars({**values, "eval/budget_used": budget_used}, step))
        self._each(lambda t: t.free_steps and t.scalars(on_budget, per_mille))
        self._each(lambda t: t.images(grids, step))
        self._each(lambda t: t.flush())

    def close(self) -> None:
        if self.trackers:
            self._each(lambda t: t.close())
            self.trackers = {}
