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
    gradient_images: int = 128  # base samples the gradient cosines are measured at (a measurement only)

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


def gradient_cosines(net: PreferenceNet, policy: Policy, gold, n: int, cfg: PreferenceConfig, seed: int,
                     first: PreferenceNet | None = None) -> dict:
    """Cosine between ∇proxy and ∇gold at base samples: per image in pixels (mean), and of the batch-mean
    reward in the LoRA parameters through the 4-step sampler (the update direction of a first-order method).
    With `first` (another proxy), also between ∇proxy and ∇first ("first_pixels", "first_lora_params")."""
    prompts = [TRAIN_PROMPTS[i % len(TRAIN_PROMPTS)] for i in range(n)]
    onehot = attributes(prompts).one_hot()
    scorers = {"proxy": lambda im: net(im, onehot), "gold": lambda im: gold(im, prompts)}
    if first is not None:
        scorers["first"] = lambda im: first(im, onehot)
    images = _draw(policy, prompts, seed, 4, cfg.mid_guidance).requires_grad_(True)
    pixel = {k: torch.autograd.grad(f(images).sum(), images)[0].flatten(1) for k, f in scorers.items()}
    lora = Policy(copy.deepcopy(policy.unet), policy.text_encoder, policy.tokenizer, policy.scheduler,
                  config=ModelConfig(lora_rank=8), image_size=policy.image_size)
    params = lora.trainable_parameters()
    flat = {}
    for k, score in scorers.items():
        with lora.meter.paused():
            im = sample(lora, prompts, SamplerConfig(steps=4, guidance_scale=cfg.mid_guidance),
                        torch.Generator().manual_seed(seed), grad=True).images
        flat[k] = torch.cat([g.flatten() for g in torch.autograd.grad(score(im).mean(), params)])
    cos = lambda a, b, dim: F.cosine_similarity(a, b, dim=dim)
    out = {"pixels": round(cos(pixel["proxy"], pixel["gold"], 1).mean().item(), 4),
           "lora_params": round(cos(flat["proxy"], flat["gold"], 0).item(), 4)}
    if first is not None:
        out |= {"first_pixels": round(cos(pixel["proxy"], pixel["first"], 1).mean().item(), 4),
                "first_lora_params": round(cos(flat["proxy"], flat["first"], 0).item(), 4)}
    return out


@dataclass
class Pairs:
    """Same-prompt image pairs (a, b: (N, 3, 16, 16)) and the gold's margin gold(a) − gold(b) (N,)."""

    a: torch.Tensor
    b: torch.Tensor
    prompts: list[str]
    margin: torch.Tensor

    def __getitem__(self, rows: slice) -> Pairs:
        return Pairs(self.a[rows], self.b[rows], self.prompts[rows], self.margin[rows])

    def __len__(self) -> int:
        return len(self.prompts)

    def keys(self) -> set[bytes]:
        """One key per pair: its prompt and both images' bytes (two pairs share a key only if they are the same)."""
        return {p.encode() + x.numpy().tobytes() + y.numpy().tobytes() for p, x, y in zip(self.prompts, self.a, self.b)}


@dataclass
class ProxyData:
    """What the first proxy is trained and measured on, and what the second reuses: the neighbourhood's generators,
    the near pairs (the first `train_pairs` its training set, the rest held out) with the rater's labels, the far
    pairs."""

    pool: list[Policy]
    near: Pairs
    far: Pairs
    labels: torch.Tensor
    train_pairs: int

    @property
    def heldout(self) -> Pairs:
        return self.near[self.train_pairs:]


def rater_labels(margin: torch.Tensor, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """The simulated rater's choices (N,): 1 where A is preferred, with probability sigmoid(margin / T)."""
    return (torch.rand(len(margin), generator=gen) < torch.sigmoid(margin / temperature)).float()


def proxy_data(policy: Policy, gold, cfg: PreferenceConfig, gen: torch.Generator, log=print) -> ProxyData:
    """The first proxy's generators, pairs and labels, drawn from `gen` (seeded seed + 2 after torch.manual_seed(seed):
    the fine-tuned generators' adapters are initialised from torch's global generator)."""
    t0 = time.time()
    pool = [perturbed(policy, cfg.weight_noise * float(torch.rand(1, generator=gen)), gen)
            for _ in range(cfg.generators)]
    for run in range(cfg.finetuned):
        pool += finetuned(policy, gold, 1.0 if run % 2 == 0 else -1.0, cfg, gen)
    log(f"proxy: {len(pool)} neighbourhood generators ({time.time() - t0:.0f}s)")
    a, b, prompts = neighbourhood_pairs(pool, policy, cfg.train_pairs + cfg.test_pairs, cfg, gen)
    fa, fb, fprompts = far_pairs(policy, cfg.far_pairs, cfg, gen)
    log(f"proxy: {len(prompts) + len(fprompts)} pairs drawn ({time.time() - t0:.0f}s)")
    with torch.no_grad():
        near = Pairs(a, b, prompts, gold(a, prompts) - gold(b, prompts))
        far = Pairs(fa, fb, fprompts, gold(fa, fprompts) - gold(fb, fprompts))
    return ProxyData(pool, near, far, rater_labels(near.margin, cfg.label_temperature, gen), cfg.train_pairs)


def fit_preference(pairs: Pairs, labels: torch.Tensor, cfg: PreferenceConfig, gen: torch.Generator) -> PreferenceNet:
    """A PreferenceNet (initialised from torch's global generator) fitted with the Bradley-Terry loss to `labels` of
    `pairs`, batches drawn from `gen`; returned frozen, in eval mode."""
    onehot = attributes(pairs.prompts).one_hot()
    net = PreferenceNet(cfg.spec)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(pairs), generator=gen)
        for idx in order.split(cfg.batch):
            logit = net(pairs.a[idx], onehot[idx]) - net(pairs.b[idx], onehot[idx])  # Bradley-Terry: σ(r_A - r_B)
            loss = F.binary_cross_entropy_with_logits(logit, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def prefers_a(net: PreferenceNet, pairs: Pairs) -> torch.Tensor:
    """(N,) bool: whether `net` scores a above b."""
    onehot = attributes(pairs.prompts).one_hot()
    return net(pairs.a, onehot) - net(pairs.b, onehot) > 0


def train_proxy(policy: Policy, templates: torch.Tensor, cfg: PreferenceConfig, seed: int,
                log=print) -> tuple[PreferenceNet, dict, ProxyData]:
    """-> (proxy, summary: label budget, label noise, near and far agreement with gold, gradient cosines, and the
    data it was trained and measured on, which the second proxy shares)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 2)
    t0 = time.time()
    gold = gold_of(templates)
    data = proxy_data(policy, gold, cfg, gen, log)
    n, margin, labels = cfg.train_pairs, data.near.margin, data.labels
    net = fit_preference(data.near[:n], labels[:n], cfg, gen)
    agree = (prefers_a(net, data.near) == (margin > 0)).float()
    far_agree = (prefers_a(net, data.far) == (data.far.margin > 0)).float()
    summary = {"train_pairs": n, "test_pairs": cfg.test_pairs, "far_pairs": cfg.far_pairs,
               "generators": len(data.pool), "label_temperature": cfg.label_temperature,
               "mean_abs_gold_margin_near": margin.abs().mean().item(),
               "label_agreement_with_gold": ((labels > 0.5) == (margin > 0)).float()[:n].mean().item(),
               "proxy_train_agreement_with_gold": agree[:n].mean().item(),
               "proxy_heldout_agreement_with_gold": agree[n:].mean().item(),
               "proxy_far_agreement_with_gold": far_agree.mean().item(),
               "gradient_cosine_at_base": gradient_cosines(net, policy, gold, cfg.gradient_images, cfg, seed),
               "seconds": round(time.time() - t0, 1)}
    log(f"proxy: {summary}")
    return net, summary, data


def gold_of(templates: torch.Tensor):
    """The gold reward as a function (images, prompts) -> (B,)."""
    return lambda im, p: gold_score(im, attributes(p), templates, GoldSpec())


@dataclass
class SecondProxyConfig:
    """`testbed-pref-b`: a second proxy of the first's recipe (PreferenceConfig: architecture, optimiser, epochs)
    on its own labelled pairs of the same neighbourhood — the same generators — with its own seed: its own pairs,
    rater noise, initialisation and batch order. It is measured on the first proxy's held-out near and far pairs,
    which neither trained on, so its agreement with gold and with the first proxy are taken on the same pairs."""

    seed_offset: int = 100  # its seed is the build's seed plus this (the first proxy's is the build's seed)
    train_pairs: int = 4000  # its label budget, the first proxy's
    label_temperature: float = 0.03  # its rater's noise, the first proxy's: P(A > B) = sigmoid(Δgold / T)


def train_second_proxy(policy: Policy, templates: torch.Tensor, cfg: PreferenceConfig, cfg_b: SecondProxyConfig,
                       seed: int, first: PreferenceNet, data: ProxyData, log=print) -> tuple[PreferenceNet, dict]:
    """-> (second proxy, summary: its agreement with gold and with the first proxy on held-out near and far pairs,
    how often both err on one pair against how often two independent proxies would, gradient cosines)."""
    t0 = time.time()
    seed_b = seed + cfg_b.seed_offset
    torch.manual_seed(seed_b)
    gen = torch.Generator().manual_seed(seed_b + 2)
    gold = gold_of(templates)
    a, b, prompts = neighbourhood_pairs(data.pool, policy, cfg_b.train_pairs, cfg, gen)
    with torch.no_grad():
        train = Pairs(a, b, prompts, gold(a, prompts) - gold(b, prompts))
    labels = rater_labels(train.margin, cfg_b.label_temperature, gen)
    log(f"proxy-b: {len(train)} pairs drawn and labelled ({time.time() - t0:.0f}s)")
    net = fit_preference(train, labels, cfg, gen)
    summary = {"seed": seed_b, "train_pairs": len(train), "label_temperature": cfg_b.label_temperature,
               "generators": len(data.pool),
               "pairs_shared_with_first_proxy": len(train.keys() & (data.near.keys() | data.far.keys())),
               "label_agreement_with_gold": ((labels > 0.5) == (train.margin > 0)).float().mean().item(),
               "train_agreement_with_gold": (prefers_a(net, train) == (train.margin > 0)).float().mean().item()}
    for where, pairs in (("near", data.heldout), ("far", data.far)):
        truth, mine, theirs = pairs.margin > 0, prefers_a(net, pairs), prefers_a(first, pairs)
        wrong_b, wrong_a = (mine != truth).float(), (theirs != truth).float()
        summary[where] = {"pairs": len(pairs), "agreement_with_gold": 1 - wrong_b.mean().item(),
                          "first_proxy_agreement_with_gold": 1 - wrong_a.mean().item(),
                          "agreement_with_first_proxy": (mine == theirs).float().mean().item(),
                          "both_wrong": (wrong_a * wrong_b).mean().item(),
                          "both_wrong_if_independent": wrong_a.mean().item() * wrong_b.mean().item()}
    summary["gradient_cosine_at_base"] = gradient_cosines(net, policy, gold, cfg.gradient_images, cfg, seed_b,
                                                          first=first)
    summary["seconds"] = round(time.time() - t0, 1)
    log(f"proxy-b: {summary}")
    return net, summary
