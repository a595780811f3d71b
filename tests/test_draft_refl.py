"""Truncated first-order methods: the sampler's truncation options (gradient through the last K steps only, early
stop at step j) against the full sampler, ROCM unchanged by the shared regulariser, DRaFT-K / AlignProp / DRaFT-LV
on the tiny model — truncation that stays truncation (K = N refused, the first step's evaluation never reached by
gradient, checked on the graph) —, the knobs that follow the sampler's N, and the CLI for these and ReFL (whose own
tests are tests/test_refl.py)."""

import os
import subprocess
import sys

import pytest
import torch

from bench.core.divergences import gaussian_divergence, step_weights
from bench.core.errors import BenchError
from bench.core.sampler import SamplerConfig, sample
from bench.registry.lookup import knobs_for, method_class
from methods.draft import Draft, DraftConfig
from methods.refl import ReFLConfig
from methods.rocm import ROCM, ROCMConfig
from rewards.toy import Brightness

STEPS = 4


def perturb(policy, seed=0):
    """Move the LoRA weights off zero (B = 0 at the start makes the policy the reference)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in policy.trainable_parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=g))


def lora(policy):
    return [q.detach().clone() for q in policy.trainable_parameters()]


def grads(policy):
    out = [q.grad.clone() if q.grad is not None else torch.zeros_like(q) for q in policy.trainable_parameters()]
    policy.unet.zero_grad(set_to_none=True)
    return out


def build(policy, prompts, cls, cfg, steps=STEPS):
    return cls(cls.__name__.lower(), cfg, policy, SamplerConfig(steps=steps), Brightness(), prompts,
               torch.Generator().manual_seed(0))


# ---- the sampler's truncation options --------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_grad_steps_same_values_gradient_only_through_last_k(tiny_policy, train_prompts, k):
    p, cfg = tiny_policy, SamplerConfig(steps=STEPS)
    perturb(p)
    init = torch.randn(len(train_prompts), *p.latent_shape, requires_grad=True)
    full = sample(p, train_prompts, cfg, torch.Generator().manual_seed(1), grad=True, init=init.detach())
    trunc = sample(p, train_prompts, cfg, torch.Generator().manual_seed(1), grad=True, grad_steps=k, init=init)
    for name in ("states", "means", "log_probs", "x0", "images"):
        assert torch.equal(getattr(full, name).detach(), getattr(trunc, name).detach()), name
    trunc.images.mean().backward()
    assert init.grad is None  # the state entering the last K steps is detached: nothing before them gets gradient
    got = grads(p)
    # The same gradient by hand: restart the last K steps from the stored (constant) state entering them.
    first = STEPS - k
    x = full.states[:, first].detach()
    for step, t in enumerate(full.schedule.timesteps[first:], start=first):
        x0 = p.consistency(x, t, full.cond, cfg.guidance_scale)
        if step < STEPS - 1:
            x = full.schedule.alpha_bar_prev[step].sqrt() * x0 + full.schedule.sigmas[step] * full.noise[:, step]
    p.decode(x0).mean().backward()
    for a, b in zip(got, grads(p)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert any(g.abs().sum() > 0 for g in got)


def test_grad_steps_at_least_n_is_the_full_sampler(tiny_policy, train_prompts):
    p = tiny_policy
    perturb(p)
    out = []
    for grad_steps in (None, STEPS, STEPS + 3):
        traj = sample(p, train_prompts, SamplerConfig(steps=STEPS), torch.Generator().manual_seed(2), grad=True,
                      with_reference=True, grad_steps=grad_steps)
        (traj.images.mean() + (traj.means - traj.ref_means).pow(2).sum()).backward()
        out.append((traj.images.detach(), traj.ref_means.detach(), grads(p)))
    for images, ref, g in out[1:]:
        assert torch.equal(images, out[0][0]) and torch.equal(ref, out[0][1])
        assert all(torch.equal(a, b) for a, b in zip(g, out[0][2]))


def test_grad_steps_charges_only_the_truncated_work(tiny_policy, train_prompts):
    p, b = tiny_policy, len(train_prompts)
    perturb(p)
    traj = sample(p, train_prompts, SamplerConfig(steps=STEPS), torch.Generator().manual_seed(3), grad=True,
                  with_reference=True, grad_steps=2)
    # The reference is evaluated only where the steps carry gradient (noisy step 2); NaN before.
    assert torch.isnan(traj.ref_means[:, :2]).all() and torch.isfinite(traj.ref_means[:, 2]).all()
    traj.images.mean().backward()
    c = p.meter.counters()
    # 4 policy forwards + 1 reference forward, and 1 checkpoint recompute counted apart (step 2; the final step is
    # not checkpointed); backward through the policy's last 2 steps only (the reference's input x_2 is a constant).
    assert c["nfe_forward"] == 5 * b and c["nfe_backward"] == 2 * b and c["nfe_recompute"] == b


def test_last_step_stops_early_and_keeps_the_generator_in_step(tiny_policy, train_prompts):
    p, cfg = tiny_policy, SamplerConfig(steps=STEPS)
    perturb(p)
    g_full = torch.Generator().manual_seed(4)
    full = sample(p, train_prompts, cfg, g_full)
    for j in range(STEPS):
        g = torch.Generator().manual_seed(4)
        traj = sample(p, train_prompts, cfg, g, grad=True, grad_steps=1, last_step=j)
        assert traj.schedule.timesteps == full.schedule.timesteps[:j + 1] and traj.num_noisy_steps == j
        assert torch.equal(traj.states.detach(), full.states[:, :j + 1])
        with torch.no_grad():
            x0 = p.consistency(full.states[:, j], full.schedule.timesteps[j], full.cond, cfg.guidance_scale)
        torch.testing.assert_close(traj.x0.detach(), x0, rtol=0, atol=0)
        assert traj.x0.requires_grad and traj.images.shape == full.images.shape
    g_a, g_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sample(p, train_prompts, cfg, g_a, last_step=0)
    sample(p, train_prompts, cfg, g_b)
    assert torch.equal(torch.randn(3, generator=g_a), torch.randn(3, generator=g_b))  # all the noise was drawn


def test_truncation_options_refuse_bad_values(tiny_policy, train_prompts):
    for kw in ({"grad_steps": 0}, {"last_step": STEPS}, {"last_step": -1}):
        with pytest.raises(BenchError) as e:
            sample(tiny_policy, train_prompts, SamplerConfig(steps=STEPS), torch.Generator(), grad=True, **kw)
        assert "\n" not in str(e.value)


# ---- ROCM: unchanged by the shared regulariser ------------------------------------------------------------------
@pytest.mark.parametrize("divergence, beta", [("kl", 10.0), ("hellinger", 20.0), ("none", 0.0)])
def test_rocm_step_unchanged_by_the_factoring(train_prompts, divergence, beta):
    """ROCM.step against its objective written out here, on the same draws: the same weights to the bit."""
    from bench.core.policy import ModelConfig
    from bench.core.tiny import tiny

    cfg = ROCMConfig(divergence=divergence, beta=beta, batch_size=4)
    weights = []
    for by_hand in (False, True):
        torch.manual_seed(0)
        policy = tiny(ModelConfig())
        perturb(policy)
        algo = build(policy, train_prompts, ROCM, cfg)
        if not by_hand:
            algo.step()
        else:
            traj = sample(policy, algo.draw_prompts(4), algo.sampler, algo.generator, grad=True,
                          with_reference=beta > 0, rows=algo.dist.rows(4))
            reward = algo.reward(traj.images, traj.prompts)
            w = step_weights(traj.schedule.alpha_bar_prev, "uniform")
            div = sum(w[k] * gaussian_divergence(divergence, traj.means[:, k], traj.ref_means[:, k],
                                                 traj.schedule.sigmas[k].item(), per_dim=False)
                      for k in range(STEPS - 1)) if beta > 0 else torch.zeros_like(reward)
            algo.backward(-(reward - beta * div).mean())
            algo.update()
        weights.append(lora(policy))
    assert all(torch.equal(a, b) for a, b in zip(*weights))


# ---- DRaFT-K, AlignProp, DRaFT-LV -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [STEPS, STEPS + 5])
def test_draft_with_k_at_least_n_is_refused_as_rocm_none(tiny_policy, train_prompts, k):
    with pytest.raises(BenchError, match=f"k = {k} >= sampler.steps = {STEPS}: .*that is rocm-none") as e:
        build(tiny_policy, train_prompts, Draft, DraftConfig(k=k, batch_size=4))
    assert "\n" not in str(e.value)
    assert build(tiny_policy, train_prompts, Draft, DraftConfig(k=0, batch_size=4)).k_now == STEPS - 1  # 0: N - 1


def first_step_gradients(policy, algo) -> list[float]:
    """Run one outer step, recording the gradient that reaches the output of every denoiser evaluation of the
    first (noisiest) sampling step, by a hook on the autograd graph: [] if none of them is on the graph."""
    from bench.core.sampler import make_schedule

    first_t = make_schedule(policy, algo.sampler).timesteps[0]
    seen, real = [], policy.consistency

    def consistency(x, t, cond, w):
        out = real(x, t, cond, w)
        if t == first_t and out.requires_grad:
            out.register_hook(lambda g: seen.append(float(g.abs().sum())) or g)
        return out

    policy.consistency = consistency
    try:
        algo.step()
    finally:
        del policy.consistency
    return seen


@pytest.mark.parametrize("name, fields", [("draft-k", {"k": STEPS - 1}), ("draft-k", {"k": 1}), ("alignprop", {}),
                                          ("draft-k", {"k": STEPS - 1, "divergence": "kl", "beta": 1.0})])
def test_truncated_gradients_never_reach_the_first_step(tiny_policy, train_prompts, name, fields):
    """Checked on the graph: no gradient reaches the first step's evaluation of f_θ, over many AlignProp draws too,
    while ROCM's does reach it (the check can fail)."""
    perturb(tiny_policy)
    cls, overrides = method_class(name)
    algo = build(tiny_policy, train_prompts, cls, cls.Config(**(overrides | fields), batch_size=4))
    ks = set()
    for _ in range(8 if name == "alignprop" else 1):
        assert first_step_gradients(tiny_policy, algo) == []
        ks.add(algo.k_now)
    assert ks <= set(range(1, STEPS)) and (name != "alignprop" or STEPS - 1 in ks)  # the largest K was drawn
    rocm = build(tiny_policy, train_prompts, ROCM, ROCMConfig(divergence="none", beta=0.0, batch_size=4))
    assert sum(first_step_gradients(tiny_policy, rocm)) > 0


def test_alignprop_draws_k_uniformly_from_its_range(tiny_policy, train_prompts):
    cls, overrides = method_class("alignprop")
    algo = build(tiny_policy, train_prompts, cls, cls.Config(**overrides, batch_size=4))
    counts = torch.bincount(torch.tensor([algo.grad_steps() for _ in range(3000)]), minlength=STEPS + 1)
    assert counts[0] == 0 and counts[STEPS] == 0  # K in {1, …, N-1}: AlignProp's first step never carries gradient
    assert ((counts[1:STEPS] / 3000 - 1 / 3).abs() < 0.03).all(), counts


def test_draft_lv_redraws_the_last_noisy_step(tiny_policy, train_prompts, monkeypatch):
    p = tiny_policy
    perturb(p)
    algo = build(p, train_prompts, Draft, DraftConfig(batch_size=4, n_lv=3))
    seen, calls = {}, []
    real_extra, real_consistency = algo._extra_draws, p.consistency
    monkeypatch.setattr(algo, "_extra_draws", lambda traj: (seen.setdefault("traj", traj), real_extra(traj))[1])
    monkeypatch.setattr(p, "consistency", lambda x, *a: (calls.append(x.detach()), real_consistency(x, *a))[1])
    before = p.meter.counters()
    logs = algo.step()
    traj, b = seen["traj"], len(train_prompts)
    x = calls[-1].view(2, b, *p.latent_shape)  # the extra draws' inputs of the final step, draw-major
    z = (x - traj.means[:, -1].detach()) / traj.schedule.sigmas[-1]  # the re-drawn noise of the last noisy step
    assert not torch.allclose(z[0], traj.noise[:, -1]) and not torch.allclose(z[0], z[1])
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
    after = p.meter.counters()
    # the trajectory: 3 forwards without gradient + the final step with one; the draws: 2 more final steps
    assert after["images"] - before["images"] == 3 * b
    assert after["nfe_forward"] - before["nfe_forward"] == 6 * b
    assert after["nfe_backward"] - before["nfe_backward"] == 3 * b
    assert logs["k"] == 1 and "reward_traj" in logs


def test_truncation_needs_two_steps_and_alignprop_three(tiny_policy, train_prompts):
    with pytest.raises(BenchError, match="needs sampler.steps >= 2"):
        build(tiny_policy, train_prompts, Draft, DraftConfig(n_lv=2), steps=1)
    cls, overrides = method_class("alignprop")
    with pytest.raises(BenchError, match="DRaFT-1 .*needs sampler.steps >= 3"):
        build(tiny_policy, train_prompts, cls, cls.Config(**overrides), steps=2)
    assert build(tiny_policy, train_prompts, cls, cls.Config(**overrides), steps=8).k_high == 7  # K in 1 … N-1


def test_draft_regulariser_is_rocms_on_the_steps_with_gradient(tiny_policy, train_prompts):
    perturb(tiny_policy)
    logs = build(tiny_policy, train_prompts, Draft, DraftConfig(batch_size=4, k=2, divergence="kl", beta=1.0)).step()
    assert logs["divergence"] > 0 and set(k for k in logs if k.startswith("delta_k")) == {"delta_k2"}


@pytest.mark.parametrize("fields, match", [
    ({"k": -1}, "k must be >= 0"), ({"k_min": 3, "k": 2}, "k_min"), ({"n_lv": 0}, "n_lv"), ({"beta": 1.0}, "beta = 0"),
    ({"k": 4}, "rocm-none"), ({"k_min": 4}, "k_min")])
def test_draft_bad_config_is_one_line(tiny_policy, train_prompts, fields, match):
    with pytest.raises(BenchError, match=match) as e:
        build(tiny_policy, train_prompts, Draft, DraftConfig(**fields))
    assert "\n" not in str(e.value)


# ---- every entry: a step trains, knobs, the command line --------------------------------------------------------
@pytest.mark.parametrize("name, extra", [("draft-k", {}), ("alignprop", {}), ("draft-k", {"n_lv": 2}),
                                         ("draft-k", {"divergence": "kl", "beta": 1.0}), ("refl", {}),
                                         ("refl", {"pretrain_weight": 1.0})])
def test_one_step_changes_the_lora_weights(tiny_policy, train_prompts, name, extra):
    cls, overrides = method_class(name)
    algo = build(tiny_policy, train_prompts, cls, cls.Config(**(overrides | extra), batch_size=4))
    before = lora(tiny_policy)
    logs = algo.step()
    assert all(isinstance(v, float) and v == v for v in logs.values()), logs
    assert tiny_policy.meter.nfe > 0  # a step must charge compute
    assert any(not torch.equal(a, b) for a, b in zip(before, lora(tiny_policy)))


def test_knobs_follow_the_samplers_steps():
    assert set(knobs_for("draft-k")) == {"lr", "k"} and set(knobs_for("alignprop")) == {"lr"}  # AlignProp's range
    assert set(knobs_for("refl")) == {"lr", "step_min"}  # γ = 0: the regulariser is off, so not swept
    for steps in (4, 8):
        k, j = knobs_for("draft-k", steps=steps)["k"], knobs_for("refl", steps=steps)["step_min"]
        assert k.integer and (k.low, k.high) == (1, steps - 1)  # never K = N: rocm-none
        assert j.integer and (j.low, j.high) == (0, steps - 2)  # never the last step alone: DRaFT-1 with a hinge
    regularised = DraftConfig(divergence="kl", beta=2.0).resolved_knobs()
    assert (regularised["beta"].low, regularised["beta"].high) == pytest.approx((0.2, 20.0))
    assert ReFLConfig(pretrain_weight=1.0).resolved_knobs()["pretrain_weight"].high == pytest.approx(10.0)
    # the sweep reads the suite's sampler
    from bench.core.compute import Budget
    from bench.run.config import SuiteConfig, apply_sets
    from bench.sweep.protocol import method_knobs

    suite = SuiteConfig(methods=["draft-k"], rewards=["brightness"], seeds=[0], budget=Budget.parse("100nfe"))
    apply_sets(suite, ["sampler.steps=6"])
    assert method_knobs("draft-k", suite)["k"].high == 5 and method_knobs("refl", suite)["step_min"].high == 4


def test_command_line(tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    bench = [sys.executable, "-m", "bench.cli.main", "run", "--model", "tiny", "--rewards", "brightness", "--seeds", "0",
             "--budget", "200nfe", "--no-progress", "--set", "eval.points=1", "--set", "eval.min_images=0",
             "--set", "eval.max_prompts=2", "--set", "eval.samples_per_prompt=2", "--set", "method.batch_size=4"]
    p = subprocess.run([*bench, "--methods", "draft-k,alignprop,refl", "--out", str(tmp_path / "ok")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert {r.name for r in (tmp_path / "ok" / "runs").iterdir()} == {
        f"{m}__brightness__seed0" for m in ("draft-k", "alignprop", "refl")}
    p = subprocess.run([*bench, "--methods", "refl", "--set", "refl.step_min=7", "--out", str(tmp_path / "bad")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: refl"), p.stderr
