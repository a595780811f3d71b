"""DPOK on an LCM, as published: online policy gradient with a learned value baseline, replayed single transitions,
a clamped likelihood ratio and a KL to the pre-trained model (Fan et al. 2023, "DPOK: Reinforcement Learning for
Fine-tuning Text-to-Image Diffusion Models", NeurIPS, arXiv 2305.16381; google-research/DPOK, read:
train_online_pg.py — `_collect_rollout`, `_trim_buffer`, `_train_value_func`, `_train_policy_func`, `main`'s loop
and argument defaults —, pipeline_stable_diffusion_extended.py `forward_calculate_logprob` and reward_model.py
`ValueMulti`, at commit 1d49f2c of google-research/google-research).

One outer step is one round of DPOK's loop:
  1. sample `batch_size` trajectories of distinct prompts without gradient (DPOK: g_batch_size 6 prompts x
     num_samples 1), score them, and add every stochastic step as a transition (x_k, x_{k+1}, k, log π_old,
     reward, prompt) to the replay buffer, which keeps the transitions of the last `buffer_steps` rounds;
  2. train the value function V(x_k, c, k) once: `value_steps` minibatches of `value_batch_size` transitions
     drawn from the buffer, the squared error against each transition's final reward accumulated, one AdamW step;
  3. `updates_per_step` policy updates, each accumulating `accumulation` minibatches of `train_batch_size`
     transitions drawn at random from the buffer (a single step of some stored trajectory each), with the loss

         A = r - V(x_k, c, k)                                   (under no_grad: a baseline, not trained here)
         ρ = clamp( π_θ(x_{k+1}|x_k) / π_old(x_{k+1}|x_k), 1 - c, 1 + c )
         L = mean( -reward_weight · A · ρ )  +  kl_weight · mean KL( π_θ(·|x_k) ‖ π_ref(·|x_k) )

     (methods/losses.py dpok_loss), then the gradient is clipped (DPOK: 0.1) and the policy steps.
π_old is the policy that sampled the transition, possibly several updates and rounds old: DPOK stores the
log-probability at sampling time. A transition whose ratio has left the band passes no policy gradient.

The KL term. DPOK's is ‖ε_θ(x_k, k) - ε_ref(x_k, k)‖², the mean over latent elements, at the replayed state: the
per-step Gaussian KL of DDPM up to a step-dependent factor, which its Lemma 4.1 drops. Our sampler's per-step
policies are explicit Gaussians N(μ, σ_k² I), so the exact per-step KL is taken instead, ‖μ_θ - μ_ref‖² / (2σ_k²)
per latent dimension (bench/core/divergences.py; the whole-vector KL with "sum" log-probs). For an LCM step it *is*
DPOK's squared ε-difference times a known factor: μ = sqrt(ᾱ_prev)(c_skip x + c_out x̂_0) and x̂_0 = (x -
sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t), so KL_k = ᾱ_prev c_out² (1 - ᾱ_t) / (2σ_k² ᾱ_t) · mean (Δε)² (tests/test_dpok.py checks
it by hand); at the testbed's N = 4 the factor is 5.8, 3.5 and 2.5 at the three noisy steps. The reference mean
is computed without gradient, adapters off.

The value function is DPOK's ValueMulti: three step-conditioned linear layers of 256 (each output scaled by a learned
per-step gain, initialised uniform on [0, 1]; weights Xavier-normal) on the flattened state concatenated with a
text feature, then a linear output. DPOK's text feature is the CLIP text embedding of its reward model; ours is the
policy's own prompt embedding (the frozen text encoder's, cached) averaged over tokens, as no reward here exposes
one. Its weights are drawn from the method's generator; its FLOPs are charged to the meter ("value").

Which defaults come from where. DPOK's code: batch 6 trajectories a round, 5 updates of 12 x 2 transitions,
reward_weight 100, kl_weight 0.01, value lr 1e-4, value batch 256 (our buffer is smaller: all of it is then
drawn) x 5 accumulated, one value step a round, gradient clip 0.1. Translated: DPOK's buffer of 1000 transitions holds
3 1/3 rounds of 6 x 50 DDIM steps; ours keeps whole rounds, `buffer_steps` = 3 (1000 transitions would hold ~55
rounds of our 6 x 3, most of a testbed run, much more off-policy than DPOK ever replays). Ours, as for every method
here: the policy's lr and the ratio's clamp are a pair, DPOK's 1e-5 and 1e-4 for SD 1.5 with 50 steps; on the
testbed's LoRA every ratio-clipped method uses DDPO's testbed pair, lr 1e-3 and clip 1e-3 (GRPO likewise:
methods/grpo.py; DDPO's tuning found 1e-4 clipping most updates at that lr). The sweep tunes lr, ratio_clip and
kl_weight. Rewards are used raw, as DPOK uses ImageReward's score: reward_weight and kl_weight are in the reward's
units, so kl_weight x 100 regularises a reward of 1/100 the spread as strongly (docs/protocol.md §4 says the same
of ROCM's β).

Data parallelism: every process draws the same prompts, noise and replay indices; each keeps its own rows of every
round, computes the loss of the drawn transitions it holds, and the gradients (policy and value) are summed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import (
    BenchError,
    Dist,
    Knob,
    Method,
    SamplerConfig,
    TrainConfig,
    at_least,
    gaussian_divergence,
    gaussian_log_prob,
    make_schedule,
    mean_at,
    positive,
    sample,
)
from methods.losses import dpok_loss

VALUE_HIDDEN = 256  # DPOK's ValueMulti: 3 conditional layers of 256, then 1


@dataclass
class DPOKConfig(TrainConfig):
    """DPOK's fields (the module docstring says which value comes from where).

    Sweep knobs (KNOBS): lr (1e-4 to 1e-2, log), ratio_clip (1e-4 to 1e-2, log: DPOK's own 1e-4 to 10x ours) and
    kl_weight, relative (RELATIVE_KNOBS): 0.1x to 10x the entry's, log (dropped where it is 0).
    """

    KNOBS: ClassVar[dict[str, Knob]] = TrainConfig.KNOBS | {"ratio_clip": Knob(1e-4, 1e-2, log=True),
                                                           "kl_weight": Knob(0.1, 10.0, log=True)}
    RELATIVE_KNOBS: ClassVar[frozenset[str]] = frozenset({"kl_weight"})

    batch_size: int = 6
    """Trajectories sampled per outer step (one round), of distinct prompts (DPOK: g_batch_size 6 x num_samples 1)."""
    updates_per_step: int = 5
    """Policy updates per round (DPOK: p_step 5)."""
    accumulation: int = 12
    """Minibatches of replayed transitions accumulated into one update (DPOK: gradient_accumulation_steps 12)."""
    train_batch_size: int = 2
    """Transitions per minibatch, drawn at random from the buffer without replacement (DPOK: p_batch_size 2)."""
    buffer_steps: int = 3
    """Rounds whose transitions the replay buffer keeps, this one included (DPOK: 1000 transitions, 3 1/3 rounds)."""
    ratio_clip: float = 1e-3
    """c: the likelihood ratio is clamped to 1 ± c (DPOK: 1e-4 with lr 1e-5; ours: DDPO's testbed pair)."""
    reward_weight: float = 100.0
    """Weight of the policy term, per unit of advantage (reward units; DPOK: 100)."""
    kl_weight: float = 0.01
    """Weight of the per-step KL to the frozen model (DPOK: 0.01; 0: no reference forward)."""
    value_lr: float = 1e-4
    """AdamW learning rate of the value function (DPOK: v_lr 1e-4)."""
    value_batch_size: int = 256
    """Transitions per value minibatch, at most the buffer's (DPOK: v_batch_size 256)."""
    value_steps: int = 5
    """Value minibatches accumulated into the round's one value update (DPOK: v_step 5)."""
    lr: float = 1e-3
    max_grad_norm: float = 0.1
    """Clip the policy's gradient norm to this (DPOK: clip_norm 0.1)."""

    def resolve(self, name: str) -> None:
        super().resolve(name)
        for field in ("updates_per_step", "accumulation", "train_batch_size", "buffer_steps", "value_batch_size",
                      "value_steps"):
            at_least(f"{name}: {field}", getattr(self, field), 1)
        for field in ("ratio_clip", "reward_weight", "value_lr"):
            positive(f"{name}: {field}", getattr(self, field))
        at_least(f"{name}: kl_weight", self.kl_weight, 0)

    def validate(self, name: str, sampler: SamplerConfig) -> None:
        super().validate(name, sampler)
        if sampler.steps < 2:
            raise BenchError(f"{name}: DPOK trains on stochastic steps; sampler.steps must be >= 2, got {sampler.steps}")
        if self.batch_size * (sampler.steps - 1) < self.train_batch_size:
            raise BenchError(f"{name}: a round adds {self.batch_size * (sampler.steps - 1)} transitions, fewer than "
                             f"train_batch_size ({self.train_batch_size}) drawn without replacement")

    def nfe_per_step(self, sampler: SamplerConfig) -> int:
        """Sampling (N forwards per trajectory), then every replayed transition re-scored (a forward and a backward)
        with the reference's forward when kl_weight > 0."""
        replayed = self.updates_per_step * self.accumulation * self.train_batch_size
        return self.batch_size * sampler.steps + replayed * (3 + (self.kl_weight > 0))


class ConditionalLinear(nn.Module):
    """DPOK's ConditionalLinear: a linear layer whose outputs are scaled by a learned gain per sampling step."""

    def __init__(self, n_in: int, n_out: int, steps: int) -> None:
        super().__init__()
        self.lin, self.gain = nn.Linear(n_in, n_out), nn.Embedding(steps, n_out)
        nn.init.uniform_(self.gain.weight)
        nn.init.xavier_normal_(self.lin.weight)

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # (b, n_in), (b,) -> (b, n_out)
        return self.gain(k) * self.lin(x)


class ValueFunction(nn.Module):
    """V(x_k, c, k): the expected final reward from state x_k of step k under prompt embedding c (DPOK's ValueMulti)."""

    def __init__(self, state_dims: int, text_dims: int, steps: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ConditionalLinear(state_dims + text_dims, VALUE_HIDDEN, steps),
                                     ConditionalLinear(VALUE_HIDDEN, VALUE_HIDDEN, steps),
                                     ConditionalLinear(VALUE_HIDDEN, VALUE_HIDDEN, steps)])
        self.out = nn.Linear(VALUE_HIDDEN, 1)
        nn.init.xavier_normal_(self.out.weight)

    def forward(self, x: torch.Tensor, text: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """x (b, C, H, W), text (b, D), k (b,) -> (b,)."""
        h = torch.cat([x.flatten(1), text], 1)
        for layer in self.layers:
            h = F.relu(layer(h, k))
        return self.out(h)[:, 0]


class DPOK(Method):
    """DPOK: a value baseline, replayed single transitions, a clamped ratio and a per-step KL to the frozen model."""

    Config = DPOKConfig
    STATE_ATTRS = ("buffer", "value_net", "value_optimizer")  # saved in checkpoints
    LOG_KEYS = ("loss", "policy_loss", "kl", "ratio", "clipfrac", "advantage", "terms")

    def __init__(self, name, cfg: DPOKConfig, policy, sampler, reward, prompts, generator, dist=Dist()):
        super().__init__(name, cfg, policy, sampler, reward, prompts, generator, dist)
        self.schedule = make_schedule(policy, sampler)
        self.noisy_steps = sampler.steps - 1
        self.per_dim = sampler.logprob_reduction == "mean"  # the KL on the log-ratio's scale (module docstring)
        self.buffer: list[dict] = []  # per round: this process's rows (states, log_probs, rewards, prompts)
        self.rows = dist.rows(cfg.batch_size)  # this process's rows of every round's global batch
        text_dims = policy.unet.config.cross_attention_dim  # D of the prompt embeddings (B, L, D)
        seed = int(torch.randint(2**31 - 1, (), generator=generator))  # the same weights in every process
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = ValueFunction(int(torch.tensor(policy.latent_shape).prod()), text_dims, self.noisy_steps)
        self.value_net = net.to(policy.device)
        self.value_optimizer = torch.optim.AdamW(self.value_net.parameters(), lr=cfg.value_lr, weight_decay=0.0)

    # ---- the buffer: global transition ids over the kept rounds ----------------------------------------------------
    @property
    def transitions(self) -> int:
        return len(self.buffer) * self.cfg.batch_size * self.noisy_steps

    def gather(self, ids: torch.Tensor) -> dict | None:
        """The transitions with global ids `ids` that this process holds (order kept), stacked: states x (m, C, H, W),
        next states (m, C, H, W), steps k (m,), old log-probs (m,), rewards (m,), prompts; None if it holds none."""
        per_round = self.cfg.batch_size * self.noisy_steps
        r, row, k = ids // per_round, (ids % per_round) // self.noisy_steps, ids % self.noisy_steps
        position = torch.full((self.cfg.batch_size,), -1, dtype=torch.long)
        position[self.rows] = torch.arange(len(self.rows))
        mine = position[row] >= 0
        if not mine.any():
            return None
        dev = self.policy.device
        items = [(self.buffer[int(a)], int(position[b]), int(c)) for a, b, c in zip(r[mine], row[mine], k[mine])]
        return {"x": torch.stack([d["states"][p, c] for d, p, c in items]).to(dev),
                "next": torch.stack([d["states"][p, c + 1] for d, p, c in items]).to(dev),
                "k": k[mine].to(dev), "old": torch.stack([d["log_probs"][p, c] for d, p, c in items]).to(dev),
                "reward": torch.stack([d["rewards"][p] for d, p, _ in items]).to(dev),
                "prompts": [d["prompts"][p] for d, p, _ in items]}

    def value(self, batch: dict) -> torch.Tensor:
        """V at the transitions of `batch` (m,), its FLOPs charged (and its backward, when gradient reaches it)."""
        text = self.policy.encode_prompts(batch["prompts"]).mean(1)  # (m, D): the prompt embedding over tokens
        meter, m = self.policy.meter, len(batch["prompts"])
        with meter.forward("value", (tuple(batch["x"].shape[1:]), tuple(text.shape[1:])), m) as call:
            out = self.value_net(batch["x"], text, batch["k"])
        return meter.watch(out, call)

    # ---- one round -----------------------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.batch_size
        prompts = self.draw_prompt_groups(n, 1)  # (B,) distinct prompts, the global batch
        traj = sample(self.policy, prompts, self.sampler, self.generator, grad=False, rows=self.rows)
        with torch.no_grad():
            reward = self.reward(traj.images, traj.prompts).float()  # (b,) this process's rows
        global_reward = self.dist.gather_rows(reward, n)  # (B,)
        self.buffer = [*self.buffer, {"states": traj.states.detach(), "log_probs": traj.log_probs.detach(),
                                      "rewards": reward, "prompts": list(traj.prompts)}][-cfg.buffer_steps:]
        value_loss = self.train_value()
        sums = dict.fromkeys(self.LOG_KEYS, 0.0)
        norms = [self.policy_update(sums) for _ in range(cfg.updates_per_step)]
        self.steps_done += 1
        totals = self.dist.sum(sums)
        terms = max(totals.pop("terms"), 1.0)
        return {"reward_mean": global_reward.mean().item(), "reward_std": global_reward.std().item() if n > 1 else 0.0,
                "value_loss": value_loss, "buffer": float(self.transitions),
                **{k: v / terms for k, v in totals.items()}, "grad_norm": sum(norms) / len(norms)}

    def train_value(self) -> float:
        """The round's one value update from value_steps accumulated minibatches; returns their mean squared error."""
        cfg, total = self.cfg, self.transitions
        m, loss_sum = min(cfg.value_batch_size, total), 0.0
        for _ in range(cfg.value_steps):
            batch = self.gather(torch.randperm(total, generator=self.generator)[:m])
            if batch is not None:
                err = (self.value(batch) - batch["reward"]).pow(2)  # (m_local,)
                self.backward(err.mean(), self.dist.share(len(err), m) / cfg.value_steps)
                loss_sum += err.sum().item() / m
        params = list(self.value_net.parameters())
        self.dist.sum_grads(params)
        self.value_optimizer.step()
        self.value_optimizer.zero_grad(set_to_none=True)
        return self.dist.sum({"v": loss_sum})["v"] / cfg.value_steps

    def policy_update(self, sums: dict[str, float]) -> float:
        """One policy update from `accumulation` minibatches of replayed transitions; returns the gradient norm."""
        cfg, m = self.cfg, self.cfg.train_batch_size
        for _ in range(cfg.accumulation):
            batch = self.gather(torch.randperm(self.transitions, generator=self.generator)[:m])
            if batch is None:
                continue  # this process holds none of them: it still joins the gradient sum in update()
            with torch.no_grad():
                advantage = batch["reward"] - self.value(batch)  # (m_local,) the baseline is not trained here
            for k in batch["k"].unique().tolist():  # one denoiser call per step: a call has one timestep
                at = (batch["k"] == k).nonzero()[:, 0]
                loss, info = self.transition_loss(batch, at, k, advantage[at])
                self.backward(loss, self.dist.share(len(at), m) / cfg.accumulation)
                for key, value in (("loss", loss.item()), *info.items(), ("advantage", advantage[at].mean().item())):
                    sums[key] += value * len(at)
                sums["terms"] += len(at)
        return self.update()

    def transition_loss(self, batch: dict, at: torch.Tensor, k: int,
                        advantage: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """DPOK's loss on the transitions `at` of `batch`, all of noisy step k: the mean over them."""
        cfg, sigma = self.cfg, self.schedule.sigmas[k].to(self.policy.device)
        x, cond = batch["x"][at], self.policy.encode_prompts([batch["prompts"][i] for i in at.tolist()])
        mean = mean_at(self.policy, x, self.schedule, k, cond, self.sampler)  # (g, C, H, W) μ_θ(x_k), with gradient
        log_prob = gaussian_log_prob(batch["next"][at], mean, sigma, self.sampler.logprob_reduction)  # (g,)
        kl = torch.zeros_like(log_prob)
        if cfg.kl_weight > 0:
            with torch.no_grad():  # the frozen model's mean: a fixed target
                ref = mean_at(self.policy, x, self.schedule, k, cond, self.sampler, reference=True)
            kl = gaussian_divergence("kl", mean, ref, sigma.item(), per_dim=self.per_dim)  # (g,)
        return dpok_loss(log_prob, batch["old"][at], advantage, cfg.ratio_clip, kl, cfg.reward_weight, cfg.kl_weight)
