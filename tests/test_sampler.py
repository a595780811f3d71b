"""The shared sampler: equal to LCMScheduler step for step, correct log-probabilities, exact re-scoring,
reparameterised gradients identical with and without checkpointing (whose recomputation is counted apart), and
compute charged where it happens."""

import diffusers.schedulers.scheduling_lcm as scheduling_lcm
import pytest
import torch
from diffusers import LCMScheduler

from bench.core.policy import guidance_embedding
from bench.core.sampler import SamplerConfig, gaussian_log_prob, sample, step_log_prob, step_mean


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_matches_lcmscheduler_step(tiny_policy, train_prompts, steps, monkeypatch):
    p = tiny_policy
    with torch.no_grad():
        p.unet.get_submodule("conv_out").weight.normal_()  # any weights: the comparison is exact
    traj = sample(p, train_prompts, SamplerConfig(steps=steps), torch.Generator().manual_seed(0))
    sched = LCMScheduler.from_config(p.scheduler.config)
    sched.set_timesteps(steps, original_inference_steps=50)
    x = traj.states[:, 0]
    w = guidance_embedding(torch.full((len(train_prompts),), 7.0), p.unet.config.time_cond_proj_dim)
    for k, t in enumerate(sched.timesteps):
        noise = traj.noise[:, k] if k < steps - 1 else torch.zeros_like(x)
        monkeypatch.setattr(scheduling_lcm, "randn_tensor", lambda *a, _n=noise, **kw: _n)
        with torch.no_grad():
            eps = p.unet(x, t, encoder_hidden_states=traj.cond, timestep_cond=w).sample
        out = sched.step(eps, t, x)
        x = out.prev_sample
        if k < steps - 1:
            torch.testing.assert_close(x, traj.states[:, k + 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.denoised, traj.x0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gaussian_log_prob_matches_torch_normal(reduction):
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    sigma = 0.37
    ref = torch.distributions.Normal(mean, sigma).log_prob(x).flatten(1)
    ref = ref.mean(1) if reduction == "mean" else ref.sum(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, sigma, reduction), ref)


def test_stored_log_probs_and_rescoring_give_ratio_one(tiny_policy, train_prompts):
    cfg = SamplerConfig(steps=4)
    traj = sample(tiny_policy, train_prompts, cfg, torch.Generator().manual_seed(1))
    assert traj.log_probs.shape == (4, 3)
    for k in range(traj.num_noisy_steps):
        ratio = torch.exp(step_log_prob(tiny_policy, traj, k, cfg) - traj.log_probs[:, k])
        torch.testing.assert_close(ratio, torch.ones(4), rtol=0, atol=1e-5)
        # at the start the policy is the reference (LoRA B = 0)
        torch.testing.assert_close(step_mean(tiny_policy, traj, k, cfg, reference=True), traj.means[:, k])


def test_reference_differs_after_training_and_adapters_restored(tiny_policy, train_prompts):
    with torch.no_grad():
        for q in tiny_policy.trainable_parameters():
            q.add_(0.05 * torch.randn_like(q))
    cfg = SamplerConfig(steps=3)
    traj = sample(tiny_policy, train_prompts, cfg, torch.Generator().manual_seed(2), with_reference=True)
    assert (traj.means - traj.ref_means).abs().max() > 1e-4
    again = sample(tiny_policy, train_prompts, cfg, torch.Generator().manual_seed(2))
    torch.testing.assert_close(again.means, traj.means)  # the reference context switched the adapters back on


def test_checkpointing_gives_same_gradients_and_charges_recompute(tiny_policy, train_prompts):
    with torch.no_grad():
        for q in tiny_policy.trainable_parameters():
            q.add_(0.05 * torch.randn_like(q))
    grads, counters = [], []
    for ckpt in (False, True):
        tiny_policy.meter.__init__()
        traj = sample(tiny_policy, train_prompts, SamplerConfig(steps=4, checkpointing=ckpt),
                      torch.Generator().manual_seed(3), grad=True, with_reference=True)
        loss = traj.images.mean() + ((traj.means - traj.ref_means) ** 2).sum()
        loss.backward()
        grads.append([q.grad.clone() for q in tiny_policy.trainable_parameters()])
        counters.append(tiny_policy.meter.counters())
        tiny_policy.unet.zero_grad(set_to_none=True)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    b = len(train_prompts)
    # 4 policy + 3 reference forwards per sample. A backward through each, except the reference's first
    # call: its input x_T is constant and its weights frozen, so no gradient flows there (nor is it charged).
    assert counters[0]["nfe_forward"] == 7 * b and counters[0]["nfe_backward"] == 6 * b
    # checkpointing recomputes the forwards that backward goes through, except the final step's (not checkpointed):
    # 5 per sample, counted apart (nfe_recompute) and charged to no count budget (docs/protocol.md §3)
    assert counters[1]["nfe_forward"] == 7 * b and counters[1]["nfe_backward"] == 6 * b
    assert counters[1]["nfe_recompute"] == 5 * b and counters[1]["nfe"] == counters[0]["nfe"] == 7 * b + 2 * 6 * b


def test_gradient_reaches_first_step(tiny_policy, train_prompts):
    """Reparameterisation: the image depends on θ through the first (noisiest) step too."""
    init = torch.randn(len(train_prompts), *tiny_policy.latent_shape, requires_grad=True)
    traj = sample(tiny_policy, train_prompts, SamplerConfig(steps=3), torch.Generator().manual_seed(4), grad=True,
                  init=init)
    (g,) = torch.autograd.grad(traj.images.sum(), init)  # through f_θ at every step back to x_{τ_N}
    assert g.abs().sum() > 0


def test_paused_meter_charges_nothing(tiny_policy, train_prompts):
    with tiny_policy.meter.paused():
        sample(tiny_policy, train_prompts, SamplerConfig(steps=2), torch.Generator().manual_seed(0))
    assert tiny_policy.meter.nfe == 0 and tiny_policy.meter.images == 0


def test_shared_initial_noise(tiny_policy, train_prompts):
    init = torch.randn(1, *tiny_policy.latent_shape).repeat(2, 1, 1, 1)
    traj = sample(tiny_policy, train_prompts[:1] * 2, SamplerConfig(steps=3), torch.Generator().manual_seed(0),
                  init=init)
    torch.testing.assert_close(traj.states[0, 0], traj.states[1, 0])
    assert not torch.equal(traj.states[0, 1], traj.states[1, 1])


def test_reference_equals_diffusers_disabled_adapters(tiny_policy, train_prompts):
    """The fast adapter switch gives exactly what diffusers' own disable_adapters() gives."""
    with torch.no_grad():
        for q in tiny_policy.trainable_parameters():
            q.add_(0.05 * torch.randn_like(q))
    x, cond = torch.randn(4, *tiny_policy.latent_shape), tiny_policy.encode_prompts(train_prompts)
    with torch.no_grad():
        with tiny_policy.reference():
            ours = tiny_policy.consistency(x, 500, cond, 8.0)
        tiny_policy.unet.disable_adapters()
        theirs = tiny_policy.consistency(x, 500, cond, 8.0)
        tiny_policy.unet.enable_adapters()
        trained = tiny_policy.consistency(x, 500, cond, 8.0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert (trained - ours).abs().max() > 1e-4
