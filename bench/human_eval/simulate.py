"""A simulated rater: votes cast through the same HTTP API as the page, from a metric plus noise.

`bench human-eval SUITE --simulate N --noise σ` serves the app on a free loopback port and casts N votes. For
each pair it fetches the two images the page would show (PNG, as a rater sees them), scores them with the
model's gold metric (the registry's `rater` metric, else its `select` one: testbed-gold on the testbed), and
prefers the left image when  g_left - g_right + σ·ε > 0  (ε ~ N(0, 1), drawn per vote from `seed`), with a
tie when that noisy difference is within `tie_margin`. A rater who has judged every item hands over to the next
one (sim-1, sim-2, ...), so N larger than the number of items gives overlapping raters and an inter-rater agreement.
"""

from __future__ import annotations

import io
import random
import uuid
from dataclasses import dataclass

from bench.core.errors import BenchError


@dataclass
class SimConfig:
    """How the simulated rater votes."""

    votes: int = 100
    """Votes to cast in all (N)."""
    noise: float = 0.0
    """σ: standard deviation of the Gaussian noise added to each vote's gold difference (in the metric's units)."""
    metric: str = ""
    """Per-image metric that plays the rater (empty: the model's `rater` metric, e.g. testbed-gold, else `select`)."""
    tie_margin: float = 0.0
    """A noisy difference within ±tie_margin is voted a tie."""
    seed: int = 0
    """Seed of the noise."""
    rater_prefix: str = "sim"
    """Raters are named sim-1, sim-2, ... (each judges every item once at most)."""


def png_to_tensor(data: bytes):
    """PNG bytes -> (1, 3, H, W) float in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def simulate(base_url: str, model: str, cfg: SimConfig, token: str | None = None, device: str = "cpu") -> dict:
    """Cast cfg.votes votes against the server at base_url; returns {votes, raters, ties, metric, noise}."""
    import httpx
    import torch

    from bench.core.reward import Reward
    from bench.registry.catalog import MODEL_DEFAULTS
    from bench.registry.lookup import metric_class

    if cfg.votes < 1:
        raise BenchError(f"--simulate must be >= 1 votes, got {cfg.votes}")
    if cfg.noise < 0:
        raise BenchError(f"--noise must be >= 0, got {cfg.noise}")
    defaults = MODEL_DEFAULTS.get(model, {})
    metric = cfg.metric or defaults.get("rater") or defaults.get("select", "")
    cls = metric_class(metric) if metric else None
    if cls is None or not issubclass(cls, Reward):
        raise BenchError(f"the simulated rater needs a per-image metric; '{metric or '(none)'}' is not one "
                         f"(model '{model}')")
    scorer = cls(device)
    sign = 1.0 if scorer.higher_is_better else -1.0
    rng = random.Random(cfg.seed)
    cache: dict[str, float] = {}
    headers = {"X-Token": token} if token else {}
    cast, ties, rater_no = 0, 0, 1
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:

        def score(url: str, prompt: str) -> float:
            if url not in cache:
                image = png_to_tensor(_ok(client.get("/" + url)).content).to(device)
                with torch.no_grad():
                    cache[url] = sign * float(scorer(image, [prompt])[0])
            return cache[url]

        while cast < cfg.votes:
            rater = f"{cfg.rater_prefix}-{rater_no}"
            pair = _ok(client.get("/api/next", params={"rater": rater})).json()
            if pair["finished"]:
                rater_no += 1
                continue
            d = score(pair["left"], pair["prompt"]) - score(pair["right"], pair["prompt"]) + cfg.noise * rng.gauss(0, 1)
            choice = "tie" if abs(d) <= cfg.tie_margin else ("left" if d > 0 else "right")
            _ok(client.post("/api/vote", json={"pair_id": pair["pair_id"], "submission_id": str(uuid.uuid4()),
                                               "rater": rater, "choice": choice, "seconds": 0.0}))
            cast += 1
            ties += choice == "tie"
    return {"votes": cast, "raters": rater_no, "ties": ties, "metric": metric, "noise": cfg.noise}


def _ok(response):
    if response.status_code != 200:
        raise BenchError(f"rating server answered {response.status_code}: {response.text[:200]}")
    return response
