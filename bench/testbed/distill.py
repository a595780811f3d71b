"""Latent consistency distillation of the testbed teacher (Luo et al. 2023, "Latent Consistency Models",
Algorithm 1; the same recipe as diffusers' `train_lcm_distill_sd_wds.py`, in pixel space).

Per step, for a batch of real images x_0 and prompts c:
    w ~ U[w_min, w_max]                                   (CFG scale; the student sees it as `timestep_cond`)
    t = t_{n+k} from the skipping schedule {19, 39, ..., 999} (k = 20, as original_inference_steps = 50)
    x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε
    x̂_0 = x̂_T(x_t, t, ∅) + w (x̂_T(x_t, t, c) - x̂_T(x_t, t, ∅))      teacher, classifier-free guided
    x̂_{t-k} = DDIM step from t to t-k with x̂_0 and its ε̂               (the ODE solver Ψ)
    loss = d( f_θ(x_t, t, c, w), f_θ⁻(x̂_{t-k}, t-k, c, w) )              pseudo-Huber d
    θ⁻ ← μ θ⁻ + (1 - μ) θ                                                 EMA target network
where f(x, t) = c_skip(t) x + c_out(t) x̂_0(x, t) with LCMScheduler's `get_scalings_for_boundary_condition_
discrete` — exactly the consistency function `bench.core.policy.Policy.consistency` evaluates. The student starts
as the teacher plus a zero-initialised guidance projection, so at step 0 it *is* the teacher.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from bench.core.policy import guidance_embedding, x0_from_output
from bench.prompts.testbed import PRETRAIN_IMAGES, TRAIN_COMBOS
from bench.testbed.generator import GeneratorSpec, TextEncoder, alphas_cumprod, build_unet, ema_update, lr_lambda
from bench.testbed.world import DigitSampler


@dataclass
class DistillConfig:
    steps: int = 300  # optimiser steps
    batch: int = 48  # images per step
    lr: float = 5e-4  # AdamW peak learning rate
    warmup: int = 20  # warm-up steps
    w_min: float = 1.0  # CFG scale range sampled per image (standard convention: 1 = no guidance)
    w_max: float = 3.0
    target_decay: float = 0.95  # EMA decay μ of the target network θ⁻
    skip: int = 20  # k: timesteps between solver endpoints (1000 / original_inference_steps)
    huber_c: float = 0.001  # pseudo-Huber constant (diffusers' default)


def consistency_fn(unet: nn.Module, scheduler, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                   w_emb: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """c_skip(t) x_t + c_out(t) x̂_0: (B, 3, 16, 16), t (B,) long."""
    out = unet(x_t, t, encoder_hidden_states=cond, timestep_cond=w_emb).sample
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t.float())
    shape = (-1, 1, 1, 1)
    x0 = x0_from_output(out, x_t, abar[t].view(shape), scheduler.config.prediction_type)
    return c_skip.view(shape) * x_t + c_out.view(shape) * x0


def distill(teacher: nn.Module, text: TextEncoder, spec: GeneratorSpec, cfg: DistillConfig, seed: int,
            log=print) -> nn.Module:
    """-> the student UNet (with guidance embedding), eval mode."""
    from diffusers import LCMScheduler

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    scheduler = LCMScheduler(prediction_type=spec.prediction_type)
    abar = alphas_cumprod()
    student = build_unet(spec, guidance=True)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    nn.init.zeros_(student.time_embedding.cond_proj.weight)  # student == teacher at step 0
    target = copy.deepcopy(student).requires_grad_(False)
    teacher.requires_grad_(False)
    text.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0, foreach=True)  # as per tensor, faster
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, cfg.warmup, cfg.steps))
    data = DigitSampler(PRETRAIN_IMAGES, TRAIN_COMBOS)
    n_solver = len(abar) // cfg.skip  # 50 solver timesteps {k-1, 2k-1, ..., 999}
    with torch.no_grad():
        uncond_one = text([""])  # (1, L, D)
    t0 = time.time()
    for step in range(cfg.steps):
        images, prompts = data.sample(cfg.batch, gen)
        with torch.no_grad():
            cond = text(prompts)
        x0 = images * 2 - 1
        index = torch.randint(0, n_solver, (cfg.batch,), generator=gen)
        t = (index + 1) * cfg.skip - 1  # (B,) in {19, ..., 999}
        t_prev = (t - cfg.skip).clamp(min=0)
        w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(cfg.batch, generator=gen)
        w_emb = guidance_embedding(w - 1, spec.guidance_dim)  # pipelines embed w - 1
        a, a_prev = abar[t].view(-1, 1, 1, 1), abar[t_prev].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=gen)

        with torch.no_grad():  # teacher's guided DDIM step, then the target network at the solver's endpoint
            out_c, out_u = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                   encoder_hidden_states=torch.cat([cond, uncond_one.expand_as(cond)])).sample.chunk(2)
            x0 = x0_from_output(out_u + w.view(-1, 1, 1, 1) * (out_c - out_u), x_t, a, spec.prediction_type)
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            tgt = consistency_fn(target, scheduler, x_prev, t_prev, cond, w_emb, abar)
        pred = consistency_fn(student, scheduler, x_t, t, cond, w_emb, abar)
        loss = (((pred - tgt) ** 2 + cfg.huber_c**2).sqrt() - cfg.huber_c).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(target, student, cfg.target_decay)
        if step % 25 == 0 or step == cfg.steps - 1:
            log(f"distill step {step}/{cfg.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    return student.eval().requires_grad_(False)
