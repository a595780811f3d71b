"""Compute accounting: FLOP budgets, and FLOPs charged for every training forward and backward (denoiser,
VAE decoder, text encoder, reward) — checked against a hand count of each module on tiny-vae for one step of
ROCM, DDPO and D3PO — while evaluation is free, counters round-trip and counting changes no result."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.core.compute import Budget, ComputeMeter
from bench.core.errors import BenchError
from bench.core.policy import ModelConfig, Policy, guidance_embedding
from bench.core.reward import Reward
from bench.core.sampler import SamplerConfig, sample, step_log_prob
from bench.core.tiny import tiny_vae
from bench.prompts.sets import PROMPT_SETS
from bench.registry.lookup import method_class

PROMPTS = PROMPT_SETS["tiny"]["train"]
STEPS = 3  # N: two stochastic steps, so every kind of call (first, middle, last step) occurs


class ConvReward(Reward):
    """A differentiable reward with FLOPs of its own (brightness has none: a mean is not a counted op)."""

    name, version, differentiable = "conv-test", "1", True

    def __init__(self, device="cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        with torch.random.fork_rng():  # fixed weights, and the caller's RNG is left alone
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(8, 1)).requires_grad_(False)

    def score(self, images, prompts):
        return self.net(images)[:, 0]  # (B, 3, H, W) -> (B,)


def fresh_policy(meter: ComputeMeter | None = None) -> Policy:
    torch.manual_seed(0)  # LoRA initialisation, as the runner seeds it
    return tiny_vae(ModelConfig(name="tiny-vae"), meter)


@pytest.fixture(scope="module")
def hand():
    """Forward FLOPs per sample of each module, counted on separately built modules with torch's own
    FlopCounterMode, attention by the math kernel (batched matmuls torch counts itself), on a batch of 3."""
    p, b = fresh_policy(), 3
    tok = p.tokenizer(PROMPTS[:b], padding="max_length", truncation=True, return_tensors="pt",
                      max_length=p.tokenizer.model_max_length)

    def count(fn) -> float:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / b

    cond = p.text_encoder(tok.input_ids)[0]  # (b, L, D)
    x = torch.randn(b, *p.latent_shape)  # (b, 4, 32, 32)
    ts = torch.full((b,), 500, dtype=torch.long)
    w = guidance_embedding(torch.full((b,), 7.0), p.unet.config.time_cond_proj_dim)  # (b, 32)
    unet = lambda: p.unet(x, ts, encoder_hidden_states=cond, timestep_cond=w)  # noqa: E731
    out = {"text": count(lambda: p.text_encoder(tok.input_ids)), "policy": count(unet),
           "decoder": count(lambda: p.vae.decode(x)), "reward": count(lambda: ConvReward().score(
               torch.rand(b, 3, p.image_size, p.image_size), PROMPTS[:b]))}
    p.unet.disable_adapters()
    out["reference"] = count(unet)
    p.unet.enable_adapters()
    assert all(v > 0 for v in out.values()) and out["policy"] > out["reference"]  # LoRA's matmuls count
    return out


def one_step(name: str, **overrides) -> tuple[ComputeMeter, Policy, object]:
    """A fresh policy and method (as bench/run/runner.py builds them) after one outer step."""
    meter = ComputeMeter()
    policy = fresh_policy(meter)
    cls, registered = method_class(name)
    algo = cls(name, cls.Config(**(registered | overrides)), policy, SamplerConfig(steps=STEPS),
               ConvReward("cpu", meter), PROMPTS, torch.Generator().manual_seed(0))
    algo.step()
    return meter, policy, algo


def check(meter: ComputeMeter, policy: Policy, hand: dict, denoiser: float, decoder: float, reward: float) -> None:
    c = meter.counters()
    expected = {"flops_denoiser": denoiser, "flops_decoder": decoder, "flops_reward": reward,
                "flops_text": policy.cached_prompts * hand["text"]}  # each distinct prompt encoded once
    for key, value in expected.items():
        assert c[key] == pytest.approx(value, rel=1e-9), key
    assert c["flops"] == pytest.approx(sum(expected.values()), rel=1e-12)
    assert c["nfe_eq"] == pytest.approx(c["flops"] / hand["policy"], abs=1e-4)


def test_rocm_step_charges_decoder_and_reward_backward(hand):
    b = 2
    meter, policy, _ = one_step("rocm-kl", batch_size=b)
    pol, ref, n = hand["policy"], hand["reference"], STEPS
    # Policy: N forwards, N backwards. Reference: N-1 forwards; its first call's input x_T is constant and its
    # weights frozen, so no gradient flows there: N-2 backwards. A backward costs 2 forwards. The sampler's
    # checkpointing (on here) recomputes the policy's N-1 noisy steps (not the final step) and the reference's N-2
    # with a backward: counted apart, in no budget.
    assert (meter.nfe_forward, meter.nfe_backward) == (b * (n + n - 1), b * (n + n - 2))
    assert meter.nfe_recompute == b * (n - 1 + n - 2)
    assert meter.flops_recompute == pytest.approx(b * (pol * (n - 1) + ref * (n - 2)), rel=1e-9)
    denoiser = b * (pol * (n + 2 * n) + ref * (n - 1 + 2 * (n - 2)))
    check(meter, policy, hand, denoiser, decoder=3 * b * hand["decoder"], reward=3 * b * hand["reward"])


def test_ddpo_step_charges_no_decoder_or_reward_backward(hand):
    b = 2
    meter, policy, _ = one_step("ddpo", prompts_per_step=1, samples_per_prompt=b, train_batch_size=1)
    n = STEPS
    # Sampling without gradients: N policy forwards. Re-scoring: a forward and a backward per stochastic step.
    assert (meter.nfe_forward, meter.nfe_backward) == (b * (n + n - 1), b * (n - 1))
    check(meter, policy, hand, b * hand["policy"] * (n + 3 * (n - 1)), decoder=b * hand["decoder"],
          reward=b * hand["reward"])


def test_d3po_step_charges_reference_forwards_only(hand):
    meter, policy, algo = one_step("d3po", batch_size=2, train_batch_size=1)  # one pair
    assert algo.ties == 0
    n = STEPS
    # Sampling: N policy forwards of 2 samples; per stochastic step the winner and the loser (1 sample each):
    # a reference forward without gradient, a policy forward and backward.
    denoiser = 2 * (hand["policy"] * (n + 3 * (n - 1)) + hand["reference"] * (n - 1))
    check(meter, policy, hand, denoiser, decoder=2 * hand["decoder"], reward=2 * hand["reward"])


def test_backward_charged_only_where_gradient_flows(hand):
    meter = ComputeMeter()
    p = fresh_policy(meter)
    reward = ConvReward("cpu", meter)
    traj = sample(p, PROMPTS[:2], SamplerConfig(steps=2), torch.Generator().manual_seed(0), grad=True)
    scores = reward(traj.images, traj.prompts)
    assert scores.requires_grad
    before = meter.counters()  # the graph exists, but nothing was back-propagated: forwards only
    assert before["flops_decoder"] == pytest.approx(2 * hand["decoder"]) and before["nfe_backward"] == 0
    scores.sum().backward()
    after = meter.counters()
    assert after["flops_decoder"] == pytest.approx(3 * before["flops_decoder"])
    assert after["flops_reward"] == pytest.approx(3 * before["flops_reward"])
    with torch.no_grad():  # DDPO and D3PO score under no_grad: no hook, no backward
        reward(traj.images, traj.prompts)
    assert meter.flops["reward"] == pytest.approx(4 * before["flops_reward"])


def test_paused_work_charges_and_measures_nothing():
    meter = ComputeMeter()
    p = fresh_policy(meter)
    with meter.paused():
        traj = sample(p, PROMPTS[:2], SamplerConfig(steps=2), torch.Generator().manual_seed(0), grad=True,
                      with_reference=True)
        ConvReward("cpu", meter)(traj.images, traj.prompts).sum().backward()
        step_log_prob(p, traj, 0, SamplerConfig(steps=2)).sum().backward()
    assert meter.counters() == ComputeMeter().counters() and not meter.flops_per_sample


def test_counting_changes_no_result_and_no_rng():
    """The first call of each module is counted by FlopCounterMode, later ones are not: images, gradients and
    every generator's state are bitwise the same either way, and the global RNG is not touched."""
    def rocm_like(p: Policy, meter: ComputeMeter, seed: int) -> tuple[torch.Tensor, torch.Generator]:
        gen = torch.Generator().manual_seed(seed)
        traj = sample(p, PROMPTS[:3], SamplerConfig(steps=STEPS), gen, grad=True, with_reference=True)
        loss = ConvReward("cpu", meter)(traj.images, traj.prompts).sum() + (traj.means - traj.ref_means).sum()
        loss.backward()
        return traj.images, gen

    runs = []
    for warm in (False, True, True):
        meter = ComputeMeter()
        p = fresh_policy(meter)
        if warm:  # the same work first (other noise), so that nothing is counted in the compared call
            rocm_like(p, meter, seed=5)
            p.clear_prompt_cache()
            p.unet.zero_grad(set_to_none=True)
        cached = dict(meter.flops_per_sample)
        rng = torch.get_rng_state()
        images, gen = rocm_like(p, meter, seed=1)
        assert torch.equal(torch.get_rng_state(), rng)
        assert (meter.flops_per_sample == cached) == warm  # counted in the compared call only when cold
        runs.append((images, [q.grad for q in p.trainable_parameters()], gen.get_state()))
    for images, grads, state in runs[1:]:
        assert torch.equal(images, runs[0][0]) and torch.equal(state, runs[0][2])
        assert all(torch.equal(a, g) for a, g in zip(grads, runs[0][1]))


def test_counters_round_trip_and_old_counters_load():
    meter, _, _ = one_step("rocm-kl", batch_size=2)
    c = meter.counters()
    assert set(c) == {"nfe", "nfe_forward", "nfe_backward", "nfe_recompute", "reward_calls", "images", "seconds",
                      "flops", "flops_denoiser", "flops_decoder", "flops_reward", "flops_text", "flops_value",
                      "flops_recompute", "nfe_eq"}
    assert all(c[k] > 0 for k in c if k not in ("seconds", "flops_value")) and c["nfe_eq"] > c["nfe"]  # decoder, reward
    assert c["flops_value"] == 0  # no value function in ROCM
    back = ComputeMeter()
    back.load_counters(json.loads(json.dumps(c)))
    assert back.counters() == c
    old = {"nfe": 24, "nfe_forward": 8, "nfe_backward": 8, "reward_calls": 8, "images": 8, "seconds": 1.5}
    back.load_counters(old)
    assert back.counters() == old | {"nfe_recompute": 0} | dict.fromkeys(
        ("flops", "flops_denoiser", "flops_decoder", "flops_reward", "flops_text", "flops_value", "flops_recompute",
         "nfe_eq"), 0.0)


def test_cache_per_shape_and_nested_calls_charged_once():
    meter, lin, outer = ComputeMeter(), nn.Linear(6, 5), nn.Linear(4, 3)
    for batch in (4, 2):
        with meter.forward("reward", "lin", batch) as call:
            lin(torch.randn(batch, 6))
        assert call.charged and call.flops == 2 * 6 * 5 * batch
    assert len(meter.flops_per_sample) == 1  # counted once, reused for batch 2
    for _ in range(2):  # counted, then cached: a nested call is charged by itself, never inside the outer one
        with meter.forward("decoder", "outer", 3):
            outer(torch.randn(3, 4))
            with meter.forward("reward", "lin", 3) as inner:
                lin(torch.randn(3, 6))
        assert inner.charged
    assert meter.flops["decoder"] == 2 * (2 * 4 * 3 * 3) and meter.flops["reward"] == 2 * 6 * 5 * (4 + 2 + 3 + 3)
    with pytest.raises(ValueError, match="unknown module"):
        with meter.forward("vae", "x", 1):
            pass


class PromptCachingReward(ConvReward):
    """Like PickScore: a text tower run once per new prompt (cached), an image tower on every image."""

    name = "prompt-caching-test"

    def __init__(self, device="cpu", meter: ComputeMeter | None = None):
        super().__init__(device, meter)
        self.text_tower, self.cache = nn.Linear(16, 8, bias=False), {}

    def score(self, images, prompts):
        new = sorted(set(prompts) - set(self.cache))
        if new:
            tokens = torch.ones(len(new), 16)  # (M, 16) stand-in token features
            with torch.no_grad(), self.prompt_forward(tuple(tokens.shape[1:]), len(new)):
                self.cache.update(zip(new, self.text_tower(tokens)))
        text = torch.stack([self.cache[p] for p in prompts])  # (B, 8)
        return super().score(images, prompts) + text.sum(1)


def test_reward_prompt_cache_charged_per_miss(hand):
    meter = ComputeMeter()
    reward, images = PromptCachingReward("cpu", meter), torch.rand(4, 3, 64, 64)
    reward(images, PROMPTS[:4])  # 4 misses: counted with the image tower, the text part left out of its count
    reward(images, PROMPTS[2:6])  # 2 misses
    reward(images, PROMPTS[:4])  # none
    assert meter.flops["reward"] == pytest.approx(12 * hand["reward"] + 6 * 2 * 16 * 8, rel=1e-12)


@pytest.mark.parametrize("text,kind,amount", [
    ("3e15flop", "flops", 3e15), ("2.5tflop", "flops", 2.5e12), ("40gflop", "flops", 4e10), ("1pflop", "flops", 1e15),
    (" 2E3 GFLOPS ", "flops", 2e12), ("7kflop", "flops", 7e3), ("5mflop", "flops", 5e6), ("1eflop", "flops", 1e18),
    ("1e+3flop", "flops", 1e3), ("2000nfe", "nfe", 2000), ("10m", "seconds", 600), ("1.5h", "seconds", 5400)])
def test_budget_units(text, kind, amount):
    b = Budget.parse(text)
    assert (b.kind, b.amount) == (kind, pytest.approx(amount, rel=1e-12))
    counters = {"nfe": 10, "seconds": 20.0, "flops": 30.0}
    assert b.spent(counters) == counters[kind]


@pytest.mark.parametrize("text", ["flop", "3 teraflop", "2xflop", "-1gflop", "0tflop", "1e999flop", "1.2.3gflop",
                                  "3e15", "gflop40", "1e15 flop s"])
def test_bad_flop_budget_is_one_line(text):
    with pytest.raises(BenchError, match="bad budget") as err:
        Budget.parse(text)
    assert "\n" not in str(err.value)


def test_flop_budget_fraction():
    meter = ComputeMeter()
    with meter.forward("text", "lin", 4):
        nn.Linear(10, 10)(torch.randn(4, 10))  # 2 * 10 * 10 per sample
    assert meter.fraction(Budget.parse("1600flop")) == 0.5 and meter.fraction(Budget.parse("8nfe")) == 0


def test_cpu_attention_counted_as_torch_counts_cuda_attention():
    """The CPU flash kernel, which torch's registry misses, gets the formula of the CUDA kernels."""
    from torch.utils.flop_counter import flop_registry

    from bench.core.compute import EXTRA_FLOP_FORMULAS

    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)  # (B, H, L|S, E)
    cuda = flop_registry[torch.ops.aten._scaled_dot_product_flash_attention](q, k, v, out_val=None)
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == cuda == 2 * 2 * 3 * 5 * 7 * (4 + 6)
