"""Registries as plain dicts: name -> "module:attribute" (imported on use, so `bench ls` and the report stay
light and `bench` never imports a concrete method or reward except through here). Lookups also accept a
`package.module:Name` import path or an installed package's entry point (bench/plugins.py), which they add here.

Methods map to (class, config overrides): one benchmark entry per ROCM divergence shares `methods/rocm.py`.
β defaults differ per divergence because their scales differ by orders of magnitude (docs/methods.md §2); every
run writes its β into its results and the report shows it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bench.errors import unknown_name

if TYPE_CHECKING:  # bench.method imports torch; the registry stays light
    from bench.method import Knob

MODELS: dict[str, str] = {
    "tiny": "bench.models:tiny",
    "tiny-vae": "bench.models:tiny_vae",
    "testbed": "bench.testbed.model:load",
    "lcm-dreamshaper-v7": "bench.hub:lcm_dreamshaper_v7",
    "lcm-lora-sd15": "bench.hub:lcm_lora_sd15",
    "sd15-lcm-random": "bench.models_sd15:sd15_lcm_random",
}

# Per-model defaults: training reward, prompt set, evaluation metrics (all computed at every evaluation point), and
# `select`: the metric `bench sweep` selects configurations by on the validation split — never the training reward
# (on the testbed the hidden gold, the analogue of a small human study; on real models a reward other than the one
# trained on: HPSv2 when training on PickScore, PickScore when training on anything else); `sampler`: the model's
# own sampler settings where `--set` gives none (the testbed LCM was distilled over guidance scales 1-3).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"reward": "brightness", "prompts": "tiny", "metrics": ["brightness", "colorfulness", "jpeg-compressibility", "diversity"],
             "select": "colorfulness", "latent": (3, 1, 16)},
    "tiny-vae": {"reward": "brightness", "prompts": "tiny", "metrics": ["brightness", "colorfulness", "jpeg-compressibility", "diversity"],
                 "select": "colorfulness", "latent": (4, 2, 64)},
    "testbed": {"reward": "testbed-pref", "prompts": "testbed",
                "metrics": ["testbed-align", "testbed-pref", "testbed-gold", "testbed-fid", "testbed-diversity"],
                "select": "testbed-gold", "latent": (3, 1, 16), "sampler": {"guidance_scale": 2.0}},
    "lcm-dreamshaper-v7": {"reward": "pickscore", "prompts": "animals", "metrics": ["pickscore", "hpsv2", "imagereward", "clip", "fid"],
                           "select": "hpsv2", "latent": (4, 8, 512)},
    "lcm-lora-sd15": {"reward": "pickscore", "prompts": "animals", "metrics": ["pickscore", "hpsv2", "imagereward", "clip", "fid"],
                      "select": "hpsv2", "latent": (4, 8, 512)},
    # Real size, random weights (cost measurements, bench/models_sd15.py): rewards that need no weights.
    "sd15-lcm-random": {"reward": "brightness", "prompts": "animals", "metrics": ["brightness", "colorfulness", "diversity"],
                        "select": "colorfulness", "latent": (4, 8, 512)},
}
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

# β defaults: KL's was chosen on the testbed (seed 0, 15k NFE: β = 10 doubles the proxy while gold reward and FID
# stay at the base model's; β = 1 and 3 hack the proxy, β = 30 barely moves; see results/README.md). The others
# are matched to it at small δ, where every divergence is quadratic:
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
    # AlignProp's K uniform on {1, …, N-1} at the default N = 4 sampling steps.
    "draft-k": ("methods.draft:Draft", {"k": 1}),
    "alignprop": ("methods.draft:Draft", {"k_min": 1, "k": 3}),
    "refl": ("methods.refl:ReFL", {}),
    "ddpo": ("methods.ddpo:DDPO", {}),
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
    "testbed-align": "rewards.testbed:TestbedAlign",
    "testbed-pref": "rewards.testbed:TestbedPref",
    "testbed-gold": "rewards.testbed:TestbedGold",
    "pickscore": "rewards.clip_models:PickScore",
    "clip": "rewards.clip_models:ClipScore",
    "hpsv2": "rewards.hpsv2:HPSv2",
    "hpsv21": "rewards.hpsv2:HPSv21",
    "imagereward": "rewards.imagereward:ImageReward",
    "aesthetic": "rewards.aesthetic:Aesthetic",
}

# Set metrics (evaluation only) and the built-in per-sample "kl-to-base" are metrics but not rewards.
SET_METRICS: dict[str, str] = {
    "diversity": "rewards.toy:PixelDiversity",
    "testbed-fid": "rewards.testbed:TestbedFID",
    "testbed-diversity": "rewards.testbed:TestbedDiversity",
    "fid": "rewards.fid:CleanFID",
    "kid": "rewards.fid:CleanKID",
}


def _import(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def find(kind: str, name: str) -> str:
    """The registry name of `name` of `kind` ("method", "reward", "metric", "model"): a registered name, an
    installed plugin's entry point, or a `package.module:Name` import path (registered under its declared name,
    bench/plugins.py); otherwise the did-you-mean error."""
    from bench.plugins import registry_of, resolve

    if kind in ("reward", "metric") and is_remote(name):
        return name  # a reward server's URL names itself (rewards/remote.py, docs/reward-server.md)
    found = resolve(kind, name)
    if found is None:
        available = [*REWARDS, *SET_METRICS, "kl-to-base"] if kind == "metric" else list(registry_of(kind))
        raise unknown_name(kind, name, available)
    return found


def resolve_names(kind: str, names) -> list[str]:
    """Registry names for user-given names or import paths, each checked (its contract, if a plugin's)."""
    lookup = {"method": method_class, "reward": reward_class, "metric": metric_class, "model": model_builder}[kind]
    out = [n if (kind, n) == ("metric", "kl-to-base") else find(kind, n) for n in names]
    for n in out:
        if n != "kl-to-base":
            lookup(n)
    return out


def model_builder(name: str):
    from bench.plugins import checked

    name = find("model", name)
    return checked("model", _import(MODELS[name]), MODELS[name])


def method_class(name: str) -> tuple[type, dict[str, Any]]:
    from bench.plugins import checked

    target, overrides = METHODS[find("method", name)]
    return checked("method", _import(target), target), dict(overrides)


def knobs_for(name: str, latent_dims: int | None = None) -> dict[str, Knob]:
    """The sweep knobs of a registered method entry, {field: Knob} with absolute ranges: its config class's
    KNOBS, relative ones (e.g. ROCM's β) scaled by the entry's own value (bench/method.py RELATIVE_KNOBS), and
    dropped where that value is 0 (rocm-none's β). `latent_dims`: the model's latent size, for knobs whose scale
    depends on it (β of a per-dimension ROCM entry); None keeps the registered scale. `--set` values are not
    applied: for those, call resolved_knobs() on bench.config.method_config's config."""
    cls, overrides = method_class(name)
    return cls.Config(**overrides).resolved_knobs(latent_dims)


def is_remote(name: str) -> bool:
    """Whether a reward or metric name is a reward server's URL, http(s)://HOST:PORT/NAME."""
    return name.startswith(("http://", "https://"))


def reward_class(name: str) -> type:
    from bench.plugins import checked

    if is_remote(name):
        return _import("rewards.remote:remote_class")(name)
    target = REWARDS[find("reward", name)]
    return checked("reward", _import(target), target)


def metric_class(name: str) -> type:
    from bench.plugins import checked

    if is_remote(name):
        return reward_class(name)
    name = find("metric", name)
    target = REWARDS.get(name) or SET_METRICS[name]
    return checked("metric", _import(target), target)


def describe(target: str, kind: str | None = None) -> str:
    """First line of the registered object's docstring (for `bench ls`); for a plugin that cannot be imported
    or is not a `kind` ("method", "reward", "metric", "model"), that error instead."""
    from bench.errors import BenchError
    from bench.plugins import PLUGIN_TARGETS, check, import_target

    try:
        if target in PLUGIN_TARGETS:
            obj = import_target(target, kind or "plugin")
            if kind:
                check(kind, obj, target)
        else:
            obj = _import(target)
    except BenchError as e:
        return f"(not usable: {e})"
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
