"""The testbed's rewards and metrics (DESIGN.md "The built-in testbed"), playing the real ones' roles:

- `testbed-align`: the attribute classifier's summed log-probability of the prompted digit, ink and
  background (the CLIP-score analogue);
- `testbed-pref`: a learned preference proxy, fitted with a Bradley-Terry loss to a limited number of pairs
  labelled by the gold (the PickScore analogue; exploitable by design);
- `testbed-gold`: the hidden gold preference itself (`bench.testbed.gold`), reported, never trained on by
  default, so reward hacking is measured directly: proxy up, gold down;
- `testbed-fid`: Fréchet distance to the held-out real images in the 32-d code of an autoencoder that no
  reward uses (reference statistics shipped with the weights);
- `testbed-diversity`: mean pairwise feature distance between images of the same prompt.

Images are (B, 3, H, W) in [0, 1], resized to 16x16 in torch if needed (gradients reach the pixels).
Prompts must follow the testbed grammar ("a red seven on a blue background"); others raise a BenchError.
Weights come from `bench/testbed/weights/` (`python -m bench.testbed.build` rebuilds them).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from bench.compute import ComputeMeter
from bench.reward import Reward, SetMetric
from bench.testbed.evaluators import frechet_distance
from bench.testbed.gold import GoldSpec, gold_score
from bench.testbed.nets import (AttributeClassifier, ClassifierSpec, FeatureNet, FeatureSpec, PreferenceNet,
                                PreferenceSpec, load_module, load_weights)
from bench.testbed.world import SIZE, attributes


def _to_testbed_size(images: torch.Tensor) -> torch.Tensor:
    if images.shape[-2:] == (SIZE, SIZE):
        return images
    return F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)


class TestbedAlign(Reward):
    """Attribute classifier's log p(digit) + log p(ink) + log p(background) of the prompt (CLIP-score analogue)."""

    name, version, higher_is_better, differentiable = "testbed-align", "1", True, True

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        self.net = load_module("classifier", AttributeClassifier, ClassifierSpec)[0].to(self.device)

    def score(self, images, prompts):
        attr = attributes(prompts, images.device)
        d, i, b = AttributeClassifier.split(self.net(_to_testbed_size(images)))
        pick = lambda logits, y: logits.log_softmax(1).gather(1, y[:, None])[:, 0]  # noqa: E731
        return pick(d, attr.digit) + pick(i, attr.ink) + pick(b, attr.bg)


class TestbedPref(Reward):
    """Learned preference proxy: small CNN fitted (Bradley-Terry) to 2,000 gold-labelled pairs (PickScore analogue)."""

    name, version, higher_is_better, differentiable = "testbed-pref", "1", True, True

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        self.net = load_module("proxy", PreferenceNet, PreferenceSpec)[0].to(self.device)

    def score(self, images, prompts):
        return self.net(_to_testbed_size(images), attributes(prompts, images.device).one_hot())


class TestbedGold(Reward):
    """Hidden gold preference in [0, 1]: right digit, pure colours, crisp, bold, centred strokes (never trained on)."""

    name, version, higher_is_better, differentiable = "testbed-gold", "1", True, True

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        tensors, config = load_weights("gold")
        self.templates = tensors["templates"].to(self.device)  # (10, 16, 16) mean real stroke per digit
        self.spec = GoldSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})

    def score(self, images, prompts):
        return gold_score(_to_testbed_size(images), attributes(prompts, images.device), self.templates, self.spec)


class _FeatureSetMetric(SetMetric):
    """Accumulates 32-d autoencoder features (and prompts) of every image passed to `update`."""

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        self.device = torch.device(device)
        self.net, self.ref = load_module("features", FeatureNet, FeatureSpec)
        self.net.to(self.device)
        self.reset()

    def reset(self):
        self._feats: list[np.ndarray] = []
        self._prompts: list[str] = []

    @torch.no_grad()
    def update(self, images, prompts):
        images = _to_testbed_size(images.detach().float().to(self.device))
        self._feats.append(self.net.encode(images).cpu().double().numpy())
        self._prompts += list(prompts)

    def features(self) -> np.ndarray:
        return np.concatenate(self._feats) if self._feats else np.zeros((0, self.ref["ref_mu"].numel()))


class TestbedFID(_FeatureSetMetric):
    """FID to the 397 held-out real digits (all colourings) in a 32-d autoencoder space no reward uses."""

    name, version, higher_is_better = "testbed-fid", "1", False

    def compute(self):
        return frechet_distance(self.features(), self.ref["ref_mu"].numpy(), self.ref["ref_cov"].numpy())


class TestbedDiversity(_FeatureSetMetric):
    """Mean pairwise distance of 32-d autoencoder features between images of the same prompt (collapse -> 0)."""

    name, version, higher_is_better = "testbed-diversity", "1", True

    def compute(self):
        feats = self.features()
        by_prompt: dict[str, list[int]] = {}
        for i, p in enumerate(self._prompts):
            by_prompt.setdefault(p, []).append(i)
        dists = [np.linalg.norm(feats[i] - feats[j]) for rows in by_prompt.values()
                 for i, j in itertools.combinations(rows, 2)]
        return float(np.mean(dists)) if dists else float("nan")
