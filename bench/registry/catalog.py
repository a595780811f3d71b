"""Registries as plain dicts: name -> "module:attribute" (imported on use, so `bench ls` and the report stay
light and `bench` never imports a concrete method or reward except through here). Lookups also accept a
`package.module:Name` import path or an installed package's entry point (bench/registry/plugins.py), which they add here.

Methods map to (class, config overrides): one benchmark entry per ROCM divergence shares `methods/rocm.py`.
β defaults differ per divergence because their scales differ by orders of magnitude (docs/methods.md §2); every
run writes its β into its results and the report shows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bench.core.method imports torch; the registry stays light
    pass

MODELS: dict[str, str] = {
    "tiny": "bench.core.tiny:tiny",
    "tiny-vae": "bench.core.tiny:tiny_vae",
    "testbed": "bench.testbed.model:load",
    "lcm-dreamshaper-v7": "bench.models.hub:lcm_dreamshaper_v7",
    "lcm-lora-sd15": "bench.models.hub:lcm_lora_sd15",
    "sd15-lcm-random": "bench.models.sd15:sd15_lcm_random",
}

# Per-model defaults: training reward, prompt set, evaluation metrics (all computed at every evaluation point), and
# `select`: the metric `bench sweep` selects configurations by on the validation split — never the training reward
# nor one it optimises (a term of a weighted sum, the reward inside z(...)): on real models a reward other than the
# one trained on (HPSv2 when training on PickScore, PickScore when training on anything else), on the testbed
# likewise a second preference proxy, testbed-pref-b, so that its hidden gold stays reported only; `rater`: the
# metric that stands in for human judgement (`bench human-eval --simulate` votes with it; the report's peak column
# falls back on it in folders that did not evaluate `select`: testbed folders made when the testbed selected by its
# gold); `sampler`: the model's own sampler settings where `--set` gives none (the testbed LCM was distilled over
# guidance scales 1-3). Per-step gradient checkpointing is a memory trick (its recomputation is counted apart and
# charged to no count budget, docs/protocol.md §3): off where a step's activations fit in memory many times over
# (tiny, tiny-vae, the testbed: no recomputation time), on for the 512-px models, whose ROCM step would otherwise
# hold N UNets' activations.
_SMALL_SAMPLER = {"checkpointing": False}
_REAL_SAMPLER = {"checkpointing": True}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"reward": "brightness", "prompts": "tiny", "metrics": ["brightness", "colorfulness", "jpeg-compressibility", "diversity"],
             "select": "colorfulness", "latent": (3, 1, 16), "sampler": _SMALL_SAMPLER},
    "tiny-vae": {"reward": "brightness", "prompts": "tiny", "metrics": ["brightness", "colorfulness", "jpeg-compressibility", "diversity"],
                 "select": "colorfulness", "latent": (4, 2, 64), "sampler": _SMALL_SAMPLER},
    "testbed": {"reward": "testbed-pref", "prompts": "testbed",
                "metrics": ["testbed-align", "testbed-pref", "testbed-pref-b", "testbed-gold", "testbed-fid",
                            "testbed-diversity"],
                "select": "testbed-pref-b", "rater": "testbed-gold", "latent": (3, 1, 16),
                "sampler": {"guidance_scale": 2.0, **_SMALL_SAMPLER}},
    "lcm-dreamshaper-v7": {"reward": "pickscore", "prompts": "animals", "metrics": ["pickscore", "hpsv2", "imagereward", "clip", "fid"],
                           "select": "hpsv2", "latent": (4, 8, 512), "resizable": True, "sampler": _REAL_SAMPLER},
    "lcm-lora-sd15": {"reward": "pickscore", "prompts": "animals", "metrics": ["pickscore", "hpsv2", "imagereward", "clip", "fid"],
                      "select": "hpsv2", "latent": (4, 8, 512), "resizable": True, "sampler": _REAL_SAMPLER},
    # Real size, random weights (cost measurements, bench/models/sd15.py): rewards that need no weights.
    "sd15-lcm-random": {"reward": "brightness", "prompts": "animals", "metrics": ["brightness", "colorfulness", "diversity"],
                        "select": "colorfulness", "latent": (4, 8, 512), "resizable": True, "sampler": _REAL_SAMPLER},
}
# "resizable": the builder honours model.resolution (the Stable Diffusion family); the others draw at one size.
# "latent": (channels, decoder upsampling factor, native image side in pixels), so the latent size is known without
# building the model (bench sweep centres ROCM's per-dimension β ranges on it; tests check it against the models).


def latent_dims(model: str, resolution: int = 0) -> int | None:
    """Latent dimensions C·h·w of a registered model at `resolution` pixels (0 = native); None if unknown."""
    latent = MODEL_DEFAULTS.get(model, {}).get("latent")
    if latent is None:
        return None
    channels, scale, native = latent
    side = (resolution or native) // scale
    return channels * side * side

# β defaults: KL's was chosen on testbed v1 (seed 0, 15k NFE: β = 10 doubled the proxy while gold reward and FID
# stayed at the base model's; β = 1 and 3 hacked it, β = 30 barely moved: results/testbed-beta-* at commit 05c93cc).
# The others are matched to it at small δ, where every divergence is quadratic:
# hellinger ≈ δ²/4, js ≈ δ²/8, chi2 ≈ δ² against kl = δ²/2 (so β × 2, × 4, × 0.5); tv ≈ δ/√(2π) is linear,
# matched at δ = 1 (× 1.3). All were set with the whole-vector δ on the testbed's 768-dimensional latent. ROCM's
# per_dim="auto" keeps that form there but switches js, hellinger and tv to the per-dimension form on latents over
# 1024 dimensions (real 4×64×64 latents, where the whole-vector form saturates), whose values are ~1/D as large
# (D latent dimensions): these βs are then ~D times too weak and are not real-model values; β must be swept
# (knobs_for(name, latent_dims=D) centres the β range on D × β for such entries).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "rocm-kl": ("methods.rocm:ROCM", {"divergence": "kl", "beta": 10.0}),
    "rocm-js": ("methods.rocm:ROCM", {"divergence": "js", "beta": 40.0}),
    "rocm-hellinger": ("methods.rocm:ROCM", {"divergence": "hellinger", "beta": 20.0}),
    "rocm-tv": ("methods.rocm:ROCM", {"divergence": "tv", "beta": 13.0}),
    "rocm-chi2": ("methods.rocm:ROCM", {"divergence": "chi2", "beta": 5.0}),
    "rocm-none": ("methods.rocm:ROCM", {"divergence": "none", "beta": 0.0}),
    # Truncated first-order methods (methods/draft.py, methods/refl.py), unregularised as published: DRaFT-1, and
    # AlignProp's K uniform on {1, …, N-1} (k = 0: up to N - 1, whatever the sampler's N).
    "draft-k": ("methods.draft:Draft", {"k": 1}),
    "alignprop": ("methods.draft:Draft", {"k_min": 1, "k": 0}),
    "refl": ("methods.refl:ReFL", {}),
    "ddpo": ("methods.ddpo:DDPO", {}),
    # DDPO's PPO-clip plus β x the per-step KL to the reference at the stored states: the estimator this registry
    # called "dpok" before it followed DPOK's published algorithm (methods/ddpo.py; docs/methods.md §4).
    "ddpo-kl": ("methods.ddpo:DDPO", {"beta": 0.3}),
    "d3po": ("methods.d3po:D3PO", {}),
    "grpo": ("methods.grpo:GRPO", {}),
    "dpok": ("methods.dpok:DPOK", {}),
    "rebel": ("methods.rebel:REBEL", {}),
}

REWARDS: dict[str, str] = {
    "brightness": "rewards.toy:Brightness",
    "colorfulness": "rewards.toy:Colorfulness",
    "jpeg-compressibility": "rewards.toy:JpegCompressibility",
    "jpeg-incompressibility": "rewards.toy:JpegIncompressibility",
    "testbed-align": "bench.testbed.rewards:TestbedAlign",
    "testbed-pref": "bench.testbed.rewards:TestbedPref",
    "testbed-pref-b": "bench.testbed.rewards:TestbedPrefB",
    "testbed-gold": "bench.testbed.rewards:TestbedGold",
    "pickscore": "rewards.clip_models:PickScore",
    "clip": "rewards.clip_models:ClipScore",
    "hpsv2": "rewards.hpsv2:HPSv2",
    "hpsv21": "rewards.hpsv2:HPSv21",
    "imagereward": "rewards.imagereward:ImageReward",
    "aesthetic": "rewards.aesthetic:Aesthetic",
    # The same networks at full size with random weights, no download (rewards/random_weights.py): to measure a
    # real reward's cost on `sd15-lcm-random` (`bench perf --reward`, `bench run --rewards`), never for results.
    "pickscore-random": "rewards.random_weights:PickScoreRandom",
    "hpsv2-random": "rewards.random_weights:HPSv2Random",
    "imagereward-random": "rewards.random_weights:ImageRewardRandom",
    "clip-random": "rewards.random_weights:ClipScoreRandom",
    "aesthetic-random": "rewards.random_weights:AestheticRandom",
}

# Set metrics (evaluation only) and the built-in per-sample "kl-to-base" are metrics but not rewards.
SET_METRICS: dict[str, str] = {
    "diversity": "rewards.toy:PixelDiversity",
    "testbed-fid": "bench.testbed.rewards:TestbedFID",
    "testbed-diversity": "bench.testbed.rewards:TestbedDiversity",
    "fid": "rewards.fid:CleanFID",
    "kid": "rewards.fid:CleanKID",
}

REWARD_WEIGHTS = "rewards.weights"
"""The module that knows which files each built-in reward's weights come from (FETCH, URL_FETCH) and downloads
them (fetch(names)): what `bench fetch` offers besides models and prompt sets."""
