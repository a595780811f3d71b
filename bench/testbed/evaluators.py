"""Training of the testbed's evaluator networks, and the measurements they make.

- `train_classifier`: the attribute classifier, on augmented real coloured digits (all colourings), so that
  it reads digits and colours off imperfect generator samples too;
- `train_features`: the FID feature network (an autoencoder's 32-d code) and the reference statistics of the
  held-out real images (ids 1400..1796) in every colour pair;
- `frechet_distance`, `attribute_accuracy`: what the generator's quality table and the set metrics report.

The preference proxy has its own module (`preference.py`): it needs generator samples.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from bench.prompts.testbed import ALL_COMBOS, COLOUR_PAIRS, HELDOUT_IMAGES, PRETRAIN_IMAGES
from bench.testbed.nets import AttributeClassifier, ClassifierSpec, FeatureNet, FeatureSpec
from bench.testbed.world import Attributes, DigitSampler, attributes, heldout_real


@dataclass
class EvaluatorConfig:
    classifier_steps: int = 400  # optimiser steps of the attribute classifier
    feature_steps: int = 300  # optimiser steps of the feature autoencoder
    batch: int = 64  # images per step
    lr: float = 2e-3  # Adam learning rate (cosine-decayed to 0)


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Generator-like imperfections on real images (B, 3, 16, 16): shifts of up to 1 px, blur, noise, contrast."""
    b = images.shape[0]
    shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
    x = torch.roll(images, shifts=shift, dims=(2, 3))
    blur = (torch.rand(b, 1, 1, 1, generator=gen) < 0.3).float() * torch.rand(b, 1, 1, 1, generator=gen)
    x = x * (1 - blur) + F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) * blur
    contrast = 0.6 + 0.4 * torch.rand(b, 1, 1, 1, generator=gen)
    mean = x.mean(dim=(2, 3), keepdim=True)
    low = torch.rand(b, 1, 1, 1, generator=gen) < 0.3
    x = mean + (x - mean) * torch.where(low, contrast, torch.ones_like(contrast))
    x = x + torch.randn(x.shape, generator=gen) * 0.08 * torch.rand(b, 1, 1, 1, generator=gen)
    return x.clamp(0, 1)


def attribute_accuracy(logits: torch.Tensor, attr: Attributes) -> dict[str, float]:
    """Fraction of images whose predicted digit / ink / background / all three match the prompt."""
    d, i, b = (h.argmax(1) for h in AttributeClassifier.split(logits))
    ok_d, ok_i, ok_b = d == attr.digit, i == attr.ink, b == attr.bg
    return {"digit": ok_d.float().mean().item(), "ink": ok_i.float().mean().item(),
            "background": ok_b.float().mean().item(), "all": (ok_d & ok_i & ok_b).float().mean().item()}


def _fit(net: torch.nn.Module, steps: int, lr: float, loss_of) -> float:
    """Adam with a cosine-decayed learning rate on `loss_of()` (a fresh batch's loss per call), `steps` times;
    leaves `net` in eval mode and frozen; returns the last loss."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval().requires_grad_(False)
    return loss.item()


def train_classifier(cfg: EvaluatorConfig, seed: int, log=print) -> tuple[AttributeClassifier, dict[str, float]]:
    """-> (classifier, its accuracy on the held-out real images in every colour pair)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net, data = AttributeClassifier(ClassifierSpec()), DigitSampler(PRETRAIN_IMAGES, ALL_COMBOS)

    def loss_of() -> torch.Tensor:
        images, prompts = data.sample(cfg.batch, gen)
        a = attributes(prompts)
        d, i, b = AttributeClassifier.split(net(augment(images, gen)))
        return F.cross_entropy(d, a.digit) + F.cross_entropy(i, a.ink) + F.cross_entropy(b, a.bg)

    t0 = time.time()
    _fit(net, cfg.classifier_steps, cfg.lr, loss_of)
    images, prompts = heldout_real(COLOUR_PAIRS, seed)
    with torch.no_grad():
        acc = attribute_accuracy(net(images), attributes(prompts))
    log(f"classifier: held-out real accuracy {acc} ({time.time() - t0:.0f}s)")
    return net, acc


def train_features(cfg: EvaluatorConfig, seed: int, log=print) -> tuple[FeatureNet, dict[str, torch.Tensor]]:
    """-> (feature autoencoder, {"ref_mu": (32,), "ref_cov": (32, 32)} of the held-out real images)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    net, data = FeatureNet(FeatureSpec()), DigitSampler(PRETRAIN_IMAGES, ALL_COMBOS)

    def loss_of() -> torch.Tensor:
        images, _ = data.sample(cfg.batch, gen)
        images = augment(images, gen)  # so generator-like flaws are represented, not collapsed, by the code
        return F.mse_loss(net(images), images)

    t0 = time.time()
    mse = _fit(net, cfg.feature_steps, cfg.lr, loss_of)
    images, _ = heldout_real(COLOUR_PAIRS, seed)
    with torch.no_grad():
        feats = net.encode(images).double()
    stats = {"ref_mu": feats.mean(0).float(), "ref_cov": torch.cov(feats.T).float()}
    log(f"features: reconstruction mse {mse:.4f}, reference = {len(images)} held-out real images "
        f"({len(HELDOUT_IMAGES)} digits x {len(COLOUR_PAIRS)} colour pairs) ({time.time() - t0:.0f}s)")
    return net, stats


def frechet_distance(feats: np.ndarray, ref_mu: np.ndarray, ref_cov: np.ndarray) -> float:
    """Fréchet distance between N(mean, cov) of `feats` (N, d) and the reference Gaussian N(ref_mu, ref_cov).

    Tr sqrt(C R) is computed as Σ sqrt(eig(C^½ R C^½)) of a symmetric PSD matrix (eigh), which stays real and
    stable where a general matrix square root of C R can go complex with few samples."""
    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) < 2:
        return float("nan")
    mu, cov = feats.mean(0), np.cov(feats, rowvar=False)
    ref_mu, ref_cov = np.asarray(ref_mu, np.float64), np.asarray(ref_cov, np.float64)
    vals, vecs = linalg.eigh(cov)
    cov_half = (vecs * np.sqrt(vals.clip(min=0))) @ vecs.T
    cross = linalg.eigvalsh(cov_half @ ref_cov @ cov_half).clip(min=0)
    return float(((mu - ref_mu) ** 2).sum() + np.trace(cov) + np.trace(ref_cov) - 2 * np.sqrt(cross).sum())


def diversity_of(feats: np.ndarray, prompts: list[str]) -> float:
    """Mean feature distance between two images of the same prompt: feats (B, D), prompts (B,); NaN if no prompt
    has two images (the `testbed-diversity` metric and the quality table's diversity column)."""
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    dists = [np.linalg.norm(feats[i] - feats[j]) for rows in by_prompt.values()
             for i, j in itertools.combinations(rows, 2)]
    return float(np.mean(dists)) if dists else float("nan")
