"""The testbed's rewards and metrics (docs/testbed.md), playing the real ones' roles:

- `testbed-align`: the attribute classifier's summed log-probability of the prompted digit, ink and
  background (the CLIP-score analogue);
- `testbed-pref`: a learned preference proxy, fitted with a Bradley-Terry loss to a limited number of pairs
  from the base model's neighbourhood labelled by the gold (the PickScore analogue: informative near the base
  model, exploitable far from it; `bench.testbed.preference`);
- `testbed-pref-b`: a second proxy of the same recipe, fitted to 4,000 other pairs of the same neighbourhood with its
  own seed and rater noise: as good a judge as the first, erring elsewhere; the testbed's selection metric, so that,
  as on real models, configurations are chosen by a reward other than the one trained on, and gold stays unseen;
- `testbed-gold`: the hidden gold preference itself (`bench.testbed.gold`), reported, never trained on by
  default, so reward hacking is measured directly: proxy up, gold down;
- `testbed-fid`: Fréchet distance, in the 32-d code of an autoencoder that no reward uses, to **real images of
  the same prompts**: the held-out real digits (ids 1400..1796, never trained on) of each evaluated prompt's
  digit, in its colours, every prompt weighted as often as it was evaluated; with a bootstrap standard error
  over the generated images (the evaluation draws >= 128 images per split: N well above the 32 dimensions);
- `testbed-diversity`: mean pairwise feature distance between images of the same prompt.

Images are (B, 3, H, W) in [0, 1], resized to 16x16 in torch if needed (gradients reach the pixels).
Prompts must follow the testbed grammar ("a red seven on a blue background"); others raise a BenchError.
Weights come from `bench/testbed/weights/` (`python -m bench.testbed.build` rebuilds them).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.compute import ComputeMeter
from bench.core.reward import Reward, SetMetric
from bench.prompts.testbed import HELDOUT_IMAGES
from bench.testbed.evaluators import diversity_of, frechet_distance
from bench.testbed.gold import GoldSpec, gold_score
from bench.testbed.nets import (
    PROXY_B_NAME,
    AttributeClassifier,
    ClassifierSpec,
    FeatureNet,
    FeatureSpec,
    PreferenceNet,
    PreferenceSpec,
    load_module,
    load_weights,
)
from bench.testbed.world import SIZE, attributes, colourise, digit_masks

FID_BOOTSTRAP = 50  # resamples of the generated images behind testbed-fid's standard error


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
    """Learned preference proxy: small CNN fitted (Bradley-Terry) to 4,000 gold-labelled pairs (PickScore analogue)."""

    name, version, higher_is_better, differentiable = "testbed-pref", "2", True, True
    weights = "proxy"  # bench/testbed/weights/<weights>.safetensors

    def __init__(self, device: str | torch.device = "cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        self.net = load_module(self.weights, PreferenceNet, PreferenceSpec)[0].to(self.device)

    def score(self, images, prompts):
        return self.net(_to_testbed_size(images), attributes(prompts, images.device).one_hot())


class TestbedPrefB(TestbedPref):
    """Second preference proxy: the first's recipe on 4,000 other gold-labelled pairs, own seed (selection metric)."""

    name, version = "testbed-pref-b", "1"
    weights = PROXY_B_NAME


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
    """FID to held-out real digits of the same prompts (their digit, their colours) in a 32-d autoencoder space."""

    name, version, higher_is_better = "testbed-fid", "2", False

    def compute(self) -> tuple[float, float]:
        """(FID, bootstrap standard error over the generated images)."""
        feats = self.features()
        if len(feats) < 2:
            return float("nan"), 0.0
        mu, cov = self.reference_stats(self._prompts)
        value = frechet_distance(feats, mu, cov)
        rng = np.random.default_rng(0)  # fixed: the same resamples at every evaluation point
        boot = [frechet_distance(feats[rng.integers(0, len(feats), len(feats))], mu, cov)
                for _ in range(FID_BOOTSTRAP)]
        return value, float(np.std(boot, ddof=1))

    @torch.no_grad()
    def reference_stats(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Mean (32,) and covariance (32, 32) of real images for `prompts`: for each prompt every held-out real
        image of its digit in its colours (fixed colour jitter), weighted so each prompt counts as often as in
        `prompts` whatever the number of real images of its digit."""
        masks, labels = digit_masks()
        ids = torch.tensor(list(HELDOUT_IMAGES))
        masks, labels = masks[ids], labels[ids]
        counts: dict[str, int] = {}
        for p in prompts:
            counts[p] = counts.get(p, 0) + 1
        feats, weights = [], []
        generator = torch.Generator().manual_seed(0)
        for prompt, count in sorted(counts.items()):
            attr = attributes([prompt])
            rows = torch.nonzero(labels == attr.digit[0])[:, 0]  # every held-out real image of this digit
            n = len(rows)
            images = colourise(masks[rows], attr.ink.expand(n), attr.bg.expand(n), generator)
            feats.append(self.net.encode(images.to(self.device)).cpu().double().numpy())
            weights.append(np.full(n, count / n))
        f, w = np.concatenate(feats), np.concatenate(weights)
        w = w / w.sum()
        mu = (w[:, None] * f).sum(0)
        centred = f - mu
        cov = (w[:, None] * centred).T @ centred / (1 - (w**2).sum())  # unbiased weighted covariance
        return mu, cov


class TestbedDiversity(_FeatureSetMetric):
    """Mean pairwise distance of 32-d autoencoder features between images of the same prompt (collapse -> 0)."""

    name, version, higher_is_better = "testbed-diversity", "1", True

    def compute(self):
        return diversity_of(self.features(), self._prompts)
