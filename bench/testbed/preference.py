"""The learned preference proxy (`testbed-pref`, PickScore analogue): preference pairs labelled by the hidden
gold, and a small reward model fitted to them with a Bradley-Terry loss.

Pairs (`PreferenceConfig.train_pairs`, default 2,000; plus `test_pairs` for held-out agreement): both images
of a pair answer the same prompt (any of the 110 combinations). Each image is, with equal odds,
- a sample of the distilled generator (1, 2 or 4 LCM steps, guidance scale in [2, 10]: the images RL starts
  from), or
- a perturbed real digit of the prompted digit and colours (`perturb`: thickened or thinned, shifted,
  smeared, low-contrast, off-colour, noisy, or the wrong digit), so the pairs span good and bad images.
A simulated rater prefers A over B with probability sigmoid((gold(A) - gold(B)) / `label_temperature`), so
labels are noisy, like human ones. The proxy is smaller than the classifier and sees few pairs: it learns
the gold imperfectly, and images far from its training data can score high for the wrong reasons.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.models import Policy
from bench.sampler import SamplerConfig, sample
from bench.testbed.gold import GoldSpec, gold_score
from bench.testbed.nets import PreferenceNet, PreferenceSpec
from bench.testbed.world import DigitSampler, attributes, colourise
from bench.testbed.world_prompts import ALL_COMBOS, PRETRAIN_IMAGES, make_prompt


@dataclass
class PreferenceConfig:
    train_pairs: int = 2000  # labelled pairs the proxy is trained on
    test_pairs: int = 1000  # held-out pairs for the proxy's agreement with gold
    label_temperature: float = 0.03  # rater noise: P(A > B) = sigmoid(Δgold / T)
    epochs: int = 40  # passes over the training pairs
    batch: int = 128  # pairs per step
    lr: float = 2e-3  # Adam learning rate
    weight_decay: float = 1e-4


def perturb(masks: torch.Tensor, ink: torch.Tensor, bg: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Stroke masks (B, 16, 16) -> coloured images (B, 3, 16, 16) with random flaws of random strength."""
    b = masks.shape[0]
    u = lambda: torch.rand(b, 1, 1, generator=gen)  # noqa: E731
    on = lambda p: (torch.rand(b, 1, 1, generator=gen) < p).float()  # noqa: E731
    m = masks[:, None]
    thick, thin = F.max_pool2d(m, 3, 1, 1), -F.max_pool2d(-m, 3, 1, 1)
    m = (m + on(0.25)[:, None] * u()[:, None] * (thick - m) + on(0.25)[:, None] * u()[:, None] * (thin - m))[:, 0]
    m = torch.stack([torch.roll(mi, torch.randint(-2, 3, (2,), generator=gen).tolist(), dims=(0, 1)) if s else mi
                     for mi, s in zip(m, (on(0.3)[:, 0, 0] > 0).tolist())])
    m = m * (1 - on(0.2) * 0.6 * u())  # faded strokes
    crisp = on(0.2) * u()
    m = m * (1 - crisp) + torch.sigmoid((m - 0.5) * 12) * crisp  # over-sharpened strokes
    images = colourise(m.clamp(0, 1), ink, bg, gen, jitter=0.04 + 0.2 * float(torch.rand(1, generator=gen)))
    smear = on(0.3)[:, None] * u()[:, None]
    images = images * (1 - smear) + F.avg_pool2d(images, 3, 1, 1, count_include_pad=False) * smear
    return (images + torch.randn(images.shape, generator=gen) * 0.12 * on(0.4)[:, None] * u()[:, None]).clamp(0, 1)


def pair_images(policy: Policy, n_pairs: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """n pairs of same-prompt images: A (n, 3, 16, 16), B (n, 3, 16, 16), prompts (n,)."""
    combos = [ALL_COMBOS[i] for i in torch.randint(len(ALL_COMBOS), (n_pairs,), generator=gen).tolist()]
    prompts = [make_prompt(*c) for c in combos]
    attr = attributes(prompts)
    data = DigitSampler(PRETRAIN_IMAGES, ALL_COMBOS)
    slots = []
    for _ in range(2):
        # Wrong digit for 10% of real images: a flaw only the digit term of the gold sees.
        digits = torch.where(torch.rand(n_pairs, generator=gen) < 0.1,
                             torch.randint(10, (n_pairs,), generator=gen), attr.digit)
        rows = torch.stack([data.by_digit[d][torch.randint(len(data.by_digit[d]), (1,), generator=gen)[0]]
                            for d in digits.tolist()])
        images = perturb(data.masks[rows], attr.ink, attr.bg, gen)
        use_gen = torch.nonzero(torch.rand(n_pairs, generator=gen) < 0.5)[:, 0]
        for chunk in use_gen.split(64):
            steps = [1, 2, 4][int(torch.randint(3, (1,), generator=gen))]
            w = 2.0 + 8.0 * float(torch.rand(1, generator=gen))
            with torch.no_grad(), policy.meter.paused():
                out = sample(policy, [prompts[i] for i in chunk.tolist()], SamplerConfig(steps=steps, guidance_scale=w),
                             gen)
            images[chunk] = out.images
        slots.append(images)
    return slots[0], slots[1], prompts


def train_proxy(policy: Policy, templates: torch.Tensor, cfg: PreferenceConfig, seed: int,
                log=print) -> tuple[PreferenceNet, dict]:
    """-> (proxy, summary: pair counts, label noise, held-out agreement with gold)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    t0 = time.time()
    a, b, prompts = pair_images(policy, cfg.train_pairs + cfg.test_pairs, gen)
    attr = attributes(prompts)
    with torch.no_grad():
        margin = gold_score(a, attr, templates, GoldSpec()) - gold_score(b, attr, templates, GoldSpec())
    labels = (torch.rand(len(prompts), generator=gen) < torch.sigmoid(margin / cfg.label_temperature)).float()
    onehot = attr.one_hot()
    n = cfg.train_pairs
    net = PreferenceNet(PreferenceSpec())
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for idx in order.split(cfg.batch):
            logit = net(a[idx], onehot[idx]) - net(b[idx], onehot[idx])  # Bradley-Terry: P(A > B) = σ(r_A - r_B)
            loss = F.binary_cross_entropy_with_logits(logit, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        pred = net(a, onehot) - net(b, onehot)
    agree = ((pred > 0) == (margin > 0)).float()
    summary = {"train_pairs": n, "test_pairs": cfg.test_pairs, "label_temperature": cfg.label_temperature,
               "label_agreement_with_gold": ((labels > 0.5) == (margin > 0)).float()[:n].mean().item(),
               "proxy_train_agreement_with_gold": agree[:n].mean().item(),
               "proxy_heldout_agreement_with_gold": agree[n:].mean().item(),
               "seconds": round(time.time() - t0, 1)}
    log(f"proxy: {summary}")
    return net, summary
