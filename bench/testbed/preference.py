"""The learned preference proxy (`testbed-pref`, PickScore analogue): preference pairs labelled by the hidden
gold, and a small reward model fitted to them with a Bradley-Terry loss.

Real preference data is collected on the outputs of the model being aligned and of its near variants, so a
real reward model is informative near the base model and unreliable far from it (Gao et al. 2022: optimising
it gently raises what people prefer; optimising it hard does not). The proxy's pairs are built the same way.
Both images of a pair answer the same prompt (any of the 110 combinations) from **the same initial noise**, and
come from two generators of the base model's neighbourhood, each drawn independently:
- the distilled generator itself (`share_base`), or
- a **perturbed** generator: every UNet weight tensor plus Gaussian noise of relative scale σ ~ U[0, σ_max]
  (`weight_noise`, in units of the tensor's RMS) — a stand-in for the variety of checkpoints and seeds;
- a **partly fine-tuned** generator: a LoRA trained for a few reward-gradient steps (`finetune_steps`) towards
  the gold or away from it (a random sign), saved at several points — real preference data also compares
  better and worse versions of the model.
Guidance scale and step count are drawn per chunk from the range the benchmark samples in. A simulated rater
prefers A over B with probability sigmoid((gold(A) - gold(B)) / `label_temperature`), so labels are noisy, like
human ones; the number of labelled pairs (`train_pairs`) is the label budget.

Measured after training (in `metrics.json`): agreement with the gold on held-out pairs of the same
neighbourhood ("near") and on pairs far from it ("far": strongly perturbed generators and flawed real digits,
`perturb`), and the cosine between the proxy's and the gold's gradients at base samples — in pixels and in the
LoRA parameters the methods train (through the 4-step sampler), the direction a first-order method moves.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.core.policy import ModelConfig, Policy
from bench.core.sampler import SamplerConfig, sample
from bench.prompts.testbed import ALL_COMBOS, PRETRAIN_IMAGES, TRAIN_PROMPTS, make_prompt
from bench.testbed.gold import GoldSpec, gold_score
from bench.testbed.nets import PreferenceNet, PreferenceSpec
from bench.testbed.world import DigitSampler, attributes, colourise


@dataclass
class PreferenceConfig:
    train_pairs: int = 4000  # the label budget: gold-labelled pairs the proxy is trained on
    test_pairs: int = 1000  # held-out pairs of the same neighbourhood ("near" agreement)
    far_pairs: int = 500  # held-out pairs far from the base model ("far" agreement)
    label_temperature: float = 0.03  # rater noise: P(A > B) = sigmoid(Δgold / T)
    share_base: float = 0.3  # share of images from the unperturbed generator (one image of a pair at most)
    weight_noise: float = 0.1  # σ_max: relative weight noise of the perturbed generators (× each tensor's RMS)
    far_weight_noise: float = 0.3  # relative weight noise of the far pairs' generators
    generators: int = 24  # distinct perturbed generators per pair set
    finetuned: int = 4  # partly fine-tuned generators (LoRA runs), each kept at `finetune_saves` points
    finetune_steps: int = 24  # reward-gradient steps per fine-tuning run
    finetune_saves: tuple[int, ...] = (6, 12, 24)  # steps at which a fine-tuned generator is kept
    finetune_lr: float = 3e-3  # Adam learning rate of the fine-tuning runs
    finetune_batch: int = 16  # prompts per fine-tuning step
    guidance: tuple[float, float] = (1.0, 3.0)  # guidance scales drawn per chunk (the testbed samples at 2)
    steps: tuple[int, ...] = (2, 4)  # sampling steps drawn per chunk
    chunk: int = 50  # pairs sampled together (one generator pair, one guidance, one step count)
    epochs: int = 30  # passes over the training pairs
    batch: int = 128  # pairs per step
    lr: float = 2e-3  # Adam learning rate
    weight_decay: float = 1e-4
    spec: PreferenceSpec = field(default_factory=PreferenceSpec)

    @property
    def mid_guidance(self) -> float:
        """The middle of the guidance range: the fine-tuning runs and the gradient measurements sample at it."""
        return float(sum(self.guidance) / 2)


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


def perturbed(policy: Policy, sigma: float, gen: torch.Generator) -> Policy:
    """A copy of `policy` (full UNet, no adapter) whose every weight tensor has relative Gaussian noise σ."""
    unet = copy.deepcopy(policy.unet)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * sigma * p.pow(2).mean().sqrt())
    return Policy(unet, policy.text_encoder, policy.tokenizer, policy.scheduler, config=ModelConfig(lora_rank=0),
                  image_size=policy.image_size)


def finetuned(policy: Policy, reward, sign: float, cfg: PreferenceConfig, gen: torch.Generator) -> list[Policy]:
    """Generators fine-tuned for a few reward-gradient steps on `sign · reward` (a LoRA, full-trajectory
    back-propagation on training prompts), kept at `cfg.finetune_saves` steps."""
    base = copy.deepcopy(policy.unet)
    tuned = Policy(base, policy.text_encoder, policy.tokenizer, policy.scheduler,
                   config=ModelConfig(lora_rank=8), image_size=policy.image_size)
    opt = torch.optim.Adam(tuned.trainable_parameters(), lr=cfg.finetune_lr)
    kept = []
    for step in range(1, cfg.finetune_steps + 1):
        prompts = [TRAIN_PROMPTS[i] for i in torch.randint(len(TRAIN_PROMPTS), (cfg.finetune_batch,), generator=gen).tolist()]
        sampler = SamplerConfig(steps=4, guidance_scale=cfg.mid_guidance)
        with tuned.meter.paused():
            images = sample(tuned, prompts, sampler, gen, grad=True).images
        loss = -sign * reward(images, prompts).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in cfg.finetune_saves:
            frozen = copy.deepcopy(tuned.unet).requires_grad_(False)
            kept.append(Policy(frozen, policy.text_encoder, policy.tokenizer, policy.scheduler,
                               config=ModelConfig(lora_rank=0), image_size=policy.image_size))
    return kept


def _draw(policy: Policy, prompts: list[str], noise_seed: int, steps: int, w: float) -> torch.Tensor:
    """Images of `policy` from the noise (initial and per-step) of `noise_seed`: two generators given the same
    seed differ only by their weights."""
    with torch.no_grad(), policy.meter.paused():
        return sample(policy, prompts, SamplerConfig(steps=steps, guidance_scale=w),
                      torch.Generator().manual_seed(noise_seed)).images


def neighbourhood_pairs(pool: list[Policy], base: Policy, n_pairs: int, cfg: PreferenceConfig,
                        gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """n same-prompt, same-noise pairs from generators of `pool` (or the base with odds `share_base`)."""
    a, b, prompts = [], [], []
    for start in range(0, n_pairs, cfg.chunk):
        n = min(cfg.chunk, n_pairs - start)
        combos = [ALL_COMBOS[i] for i in torch.randint(len(ALL_COMBOS), (n,), generator=gen).tolist()]
        chunk_prompts = [make_prompt(*c) for c in combos]
        steps = cfg.steps[int(torch.randint(len(cfg.steps), (1,), generator=gen))]
        w = cfg.guidance[0] + (cfg.guidance[1] - cfg.guidance[0]) * float(torch.rand(1, generator=gen))
        noise_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        # Two different generators (the base with odds share_base each): a pair never compares an image with itself.
        first, second = torch.randperm(len(pool), generator=gen)[:2].tolist()
        if float(torch.rand(1, generator=gen)) < 2 * cfg.share_base:
            first = -1
        for out, index in ((a, first), (b, second)):
            out.append(_draw(base if index < 0 else pool[index], chunk_prompts, noise_seed, steps, w))
        prompts += chunk_prompts
    return torch.cat(a), torch.cat(b), prompts


def far_pairs(base: Policy, n_pairs: int, cfg: PreferenceConfig, gen: torch.Generator):
    """Pairs far from the base model: images of strongly perturbed generators against flawed real digits."""
    far = [perturbed(base, cfg.far_weight_noise, gen) for _ in range(4)]
    a, _, prompts = neighbourhood_pairs(far, far[0], n_pairs, cfg, gen)
    attr = attributes(prompts)
    data = DigitSampler(PRETRAIN_IMAGES, ALL_COMBOS)
    return a, perturb(data.masks[data.rows_for(attr.digit.tolist(), gen)], attr.ink, attr.bg, gen), prompts


def gradient_cosines(net: PreferenceNet, policy: Policy, gold, n: int, cfg: PreferenceConfig, seed: int) -> dict:
    """Cosine between ∇proxy and ∇gold at base samples: per image in pixels (mean), and of the batch-mean
    reward in the LoRA parameters through the 4-step sampler (the update direction of a first-order method)."""
    prompts = [TRAIN_PROMPTS[i % len(TRAIN_PROMPTS)] for i in range(n)]
    onehot = attributes(prompts).one_hot()
    images = _draw(policy, prompts, seed, 4, cfg.mid_guidance).requires_grad_(True)
    g_proxy = torch.autograd.grad(net(images, onehot).sum(), images)[0].flatten(1)
    g_gold = torch.autograd.grad(gold(images, prompts).sum(), images)[0].flatten(1)
    pixel = F.cosine_similarity(g_proxy, g_gold, dim=1).mean().item()
    lora = Policy(copy.deepcopy(policy.unet), policy.text_encoder, policy.tokenizer, policy.scheduler,
                  config=ModelConfig(lora_rank=8), image_size=policy.image_size)
    params = lora.trainable_parameters()
    flat = []
    for score in (lambda im: net(im, onehot), lambda im: gold(im, prompts)):
        with lora.meter.paused():
            im = sample(lora, prompts, SamplerConfig(steps=4, guidance_scale=cfg.mid_guidance),
                        torch.Generator().manual_seed(seed), grad=True).images
        flat.append(torch.cat([g.flatten() for g in torch.autograd.grad(score(im).mean(), params)]))
    return {"pixels": round(pixel, 4), "lora_params": round(F.cosine_similarity(*flat, dim=0).item(), 4)}


def train_proxy(policy: Policy, templates: torch.Tensor, cfg: PreferenceConfig, seed: int,
                log=print) -> tuple[PreferenceNet, dict]:
    """-> (proxy, summary: label budget, label noise, near and far agreement with gold, gradient cosines)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    t0 = time.time()
    gold = lambda im, p: gold_score(im, attributes(p), templates, GoldSpec())  # noqa: E731
    pool = [perturbed(policy, cfg.weight_noise * float(torch.rand(1, generator=gen)), gen)
            for _ in range(cfg.generators)]
    for run in range(cfg.finetuned):
        pool += finetuned(policy, gold, 1.0 if run % 2 == 0 else -1.0, cfg, gen)
    log(f"proxy: {len(pool)} neighbourhood generators ({time.time() - t0:.0f}s)")
    a, b, prompts = neighbourhood_pairs(pool, policy, cfg.train_pairs + cfg.test_pairs, cfg, gen)
    fa, fb, fprompts = far_pairs(policy, cfg.far_pairs, cfg, gen)
    log(f"proxy: {len(prompts) + len(fprompts)} pairs drawn ({time.time() - t0:.0f}s)")
    with torch.no_grad():
        margin = gold(a, prompts) - gold(b, prompts)
        far_margin = gold(fa, fprompts) - gold(fb, fprompts)
    labels = (torch.rand(len(prompts), generator=gen) < torch.sigmoid(margin / cfg.label_temperature)).float()
    onehot = attributes(prompts).one_hot()
    n = cfg.train_pairs
    net = PreferenceNet(cfg.spec)
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
        agree = ((net(a, onehot) - net(b, onehot) > 0) == (margin > 0)).float()
        far_onehot = attributes(fprompts).one_hot()
        far_agree = ((net(fa, far_onehot) - net(fb, far_onehot) > 0) == (far_margin > 0)).float()
    summary = {"train_pairs": n, "test_pairs": cfg.test_pairs, "far_pairs": cfg.far_pairs,
               "generators": len(pool), "label_temperature": cfg.label_temperature,
               "mean_abs_gold_margin_near": margin.abs().mean().item(),
               "label_agreement_with_gold": ((labels > 0.5) == (margin > 0)).float()[:n].mean().item(),
               "proxy_train_agreement_with_gold": agree[:n].mean().item(),
               "proxy_heldout_agreement_with_gold": agree[n:].mean().item(),
               "proxy_far_agreement_with_gold": far_agree.mean().item(),
               "gradient_cosine_at_base": gradient_cosines(net, policy, gold, 128, cfg, seed),
               "seconds": round(time.time() - t0, 1)}
    log(f"proxy: {summary}")
    return net, summary
