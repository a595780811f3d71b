"""Suite and run configuration: typed dataclasses, `--set key=value` overrides, and up-front validation.

A suite is methods x rewards x seeds, all on one model, one sampler, one prompt split, one evaluation
harness and one budget. `--set` addresses any field:

    model.lora_rank=4   sampler.steps=8   eval.points=5   prompts.train=my_prompts.txt   checkpoint.every_steps=10
    rocm.beta=0.1       (every ROCM entry: the method family is the module name)
    rocm-kl.beta=0.1    (one entry)          method.lr=1e-4   (every method that has the field)

Everything is validated before the first run starts, so a typo never costs a half-finished suite.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from bench.core.checks import at_least, in_range, one_of, positive, require_differentiable
from bench.core.combine import non_differentiable_terms
from bench.core.compute import BUDGET_TOLERANCE, Budget
from bench.core.device import resolve_device
from bench.core.errors import BenchError, unknown_name
from bench.core.policy import ModelConfig
from bench.core.sampler import SamplerConfig


@dataclass
class EvalConfig:
    """Evaluation at fixed fractions of the budget; never charged to it (docs/protocol.md)."""

    points: int = 0
    """N > 0: evaluations at 1/N, 2/N, …, 1 of the budget (uniform). 0: the front-loaded DENSE schedule (or
    `fractions`). Always one more of the base model at 0."""
    fractions: tuple[float, ...] = ()
    """Explicit evaluation points as budget fractions in (0, 1] (1 is added if missing); overrides `points`."""
    splits: tuple[str, ...] = ("train", "test")
    """Prompt splits evaluated: train and test for reported runs; `bench sweep` uses train and validation."""
    samples_per_prompt: int = 2
    """At least this many images per prompt at each evaluation (the same noise at every point, for every method)."""
    min_images: int = 128
    """At least this many images per split (more images per prompt for a small split), so that set metrics such
    as FID are estimated from many more images than their feature dimension."""
    max_prompts: int = 0
    """0: every prompt of each split. N > 0: an evenly spread subset of N prompts of a larger split (recorded in
    every evaluation row as n_prompts)."""
    seed: int = 12345
    """Seed of the evaluation noise (fixed across methods and run seeds: paired comparisons)."""
    metrics: tuple[str, ...] = ()
    """Metrics to compute; empty = the model's defaults plus the training reward."""
    grid_images: int = 16
    """Images of the reported (last) split saved in each evaluation's sample grid."""


@dataclass
class PromptConfig:
    set: str = ""
    """Registered prompt set (empty = the model's default): its train, validation and test splits."""
    train: str = ""
    """A text file of training prompts (one per line) instead of the set's training split."""
    validation: str = ""
    """A text file of validation prompts (tuning and selection only) instead of the set's."""
    test: str = ""
    """A text file of test prompts (reported) instead of the set's."""


@dataclass
class CheckpointConfig:
    """Mid-run checkpoints (run_dir/checkpoint.pt, bench/run/checkpoint.py): a killed run continues from its last one.
    One is also saved at every evaluation point. They never change results, so they are not part of a suite's
    settings: a suite may be resumed with other values."""

    every_steps: int = 0
    """Save after every this many outer steps (0: off)."""
    every_minutes: float = 30.0
    """Save when this many minutes of wall time passed since the last save (0: off). A save costs about a second
    for a LoRA on a GPU (docs/results-format.md), so 30 minutes loses at most that much of a multi-hour run."""


@dataclass
class SuiteConfig:
    methods: list[str]
    rewards: list[str]
    seeds: list[int]
    budget: Budget
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    method_sets: dict[str, dict[str, str]] = field(default_factory=dict)
    """Raw `--set` values for method fields, by prefix (method name, family, or "method")."""
    explicit: set[str] = field(default_factory=set)
    """Section keys given by `--set` (e.g. "sampler.guidance_scale"): a model's own defaults never override them."""
    device: str = "cpu"


SECTIONS = ("model", "sampler", "eval", "prompts", "checkpoint")


def parse_value(text: str, typ: Any, key: str) -> Any:
    """Convert a `--set` string to a field's declared type."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ in (int, float, str):
            return typ(text)
        if origin in (tuple, list):
            inner = typing.get_args(typ)[0]
            items = [parse_value(t.strip(), inner, key) for t in text.split(",") if t.strip()]
            return tuple(items) if origin is tuple else items
        if origin is typing.Union or str(origin) == "types.UnionType":
            for t in typing.get_args(typ):
                if t is not type(None):
                    return parse_value(text, t, key)
    except ValueError:
        pass
    raise BenchError(f"bad value for {key}: '{text}' is not a {getattr(typ, '__name__', typ)}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def set_field(obj: Any, name: str, text: str, key: str) -> None:
    types = _field_types(type(obj))
    if name not in types:
        raise unknown_name("config field", key, [f"{key.rsplit('.', 1)[0]}.{n}" for n in types])
    setattr(obj, name, parse_value(text, types[name], key))


def apply_sets(suite: SuiteConfig, sets: list[str]) -> None:
    """Apply `key=value` overrides: sections directly, method fields kept raw until each method is built."""
    for item in sets:
        if "=" not in item:
            raise BenchError(f"bad --set '{item}': expected key=value, e.g. sampler.steps=8")
        key, value = (s.strip() for s in item.split("=", 1))
        if "." not in key:
            raise BenchError(f"bad --set key '{key}': expected section.field, e.g. rocm.beta or sampler.steps")
        prefix, name = key.rsplit(".", 1)
        if prefix in SECTIONS:
            set_field(getattr(suite, prefix), name, value, key)
            suite.explicit.add(key)
        else:
            suite.method_sets.setdefault(prefix, {})[name] = value


def family(method_target: str) -> str:
    """'methods.rocm:ROCM' -> 'rocm'."""
    return method_target.split(":")[0].rsplit(".", 1)[-1]


def method_config(name: str, suite: SuiteConfig):
    """The resolved config dataclass of one method entry: defaults < registry overrides < --set values."""
    from bench.registry.catalog import METHODS
    from bench.registry.lookup import method_class

    cls, overrides = method_class(name)
    cfg = cls.Config(**overrides)
    fam = family(METHODS[name][0])
    for prefix in ("method", fam, name):  # general to specific: the most specific wins
        for fname, text in suite.method_sets.get(prefix, {}).items():
            types = _field_types(cls.Config)
            if fname not in types:
                if prefix == "method":
                    continue  # "method.x" applies to the methods that have x (validated in validate())
                raise unknown_name(f"field of {name}", f"{prefix}.{fname}", [f"{prefix}.{n}" for n in types])
            setattr(cfg, fname, parse_value(text, types[fname], f"{prefix}.{fname}"))
    return cls, cfg


def validate(suite: SuiteConfig) -> None:
    """Every name, value and combination, before anything runs or is written; plugin import paths in the
    suite's names are replaced by the names the plugins declare."""
    from bench.prompts.sets import SPLITS
    from bench.registry.catalog import METHODS
    from bench.registry.lookup import find, method_class, metric_class, model_builder, resolve_names, reward_class

    if not suite.methods:
        raise BenchError("no methods given: e.g. --methods rocm-kl,ddpo (see `bench ls`)")
    if not suite.rewards:
        raise BenchError("no rewards given: e.g. --rewards brightness (see `bench ls`)")
    if not suite.seeds:
        raise BenchError("no seeds given: e.g. --seeds 0,1,2")
    resolve_device(suite.device)  # an unknown device, or CUDA on a machine without one
    # Plugins given as package.module:Name (or installed entry points) -> their declared registry names, which
    # name the run folders; each is checked to be a Method / Reward / metric / model builder.
    suite.methods = resolve_names("method", suite.methods)
    suite.rewards = resolve_names("reward", suite.rewards)
    suite.eval.metrics = tuple(resolve_names("metric", suite.eval.metrics))
    suite.model.name = find("model", suite.model.name)
    model_builder(suite.model.name)
    from bench.models.hub import require_cached

    require_cached(suite.model.name)
    for prefix in suite.method_sets:
        families = {family(t) for t, _ in METHODS.values()}
        if prefix != "method" and prefix not in METHODS and prefix not in families:
            raise unknown_name("--set prefix", prefix, [*SECTIONS, "method", *sorted(families), *METHODS])
    for fname in suite.method_sets.get("method", {}):
        if not any(fname in _field_types(method_class(m)[0].Config) for m in suite.methods):
            raise BenchError(f"--set method.{fname}: no method in this suite has a field '{fname}'")
    for r in suite.rewards:
        reward_class(r)
    distinct_folders(suite.rewards)
    apply_model_defaults(suite)
    check_sections(suite)
    configs = {}
    for m in suite.methods:  # every entry's config after --set, with the shared rules of bench/core/checks.py
        cls, cfg = method_config(m, suite)
        cfg.validate(m, suite.sampler)
        if cls.first_order:
            for r in suite.rewards:
                r_cls = reward_class(r)
                require_differentiable(m, r, r_cls.differentiable, non_differentiable_terms(r_cls))
        configs[m] = cfg
    check_step_fits(suite, configs)
    for metric in metrics_for(suite, suite.rewards[0]):
        if metric != "kl-to-base":
            metric_class(metric)
    ev = suite.eval
    if not ev.splits or len(set(ev.splits)) != len(ev.splits):
        raise BenchError(f"eval.splits must name distinct splits, e.g. train,test; got {','.join(ev.splits)}")
    for split in ev.splits:
        if split not in SPLITS:
            raise unknown_name("eval split", split, list(SPLITS))
    split_prompts(suite)  # every split loads (files exist, are not empty)


def distinct_folders(rewards: list[str]) -> None:
    """A training reward given twice (two spellings of one expression), or two whose run folders would be one
    (bench.results.io.run_id spells `z(a)` as `z.a`, `0.5*a` as `0.5xa` and a URL's '/' and ':' as '-'), is
    refused before anything is written."""
    from bench.core.objective import folder_name

    seen: dict[str, str] = {}
    for i, r in enumerate(rewards):
        if r in rewards[:i]:
            raise BenchError(f"reward '{r}' is given twice (spelled alike once its terms are read); give it once")
        other = seen.setdefault(folder_name(r), r)
        if other != r:
            raise BenchError(f"rewards '{other}' and '{r}' would share the run folders *__{folder_name(r)}__seed*; "
                             f"train on one of them per suite")


def check_step_fits(suite: SuiteConfig, configs: dict) -> None:
    """Refuse an `nfe` budget smaller than one outer step of a method of the suite (the step each method declares,
    `TrainConfig.nfe_per_step`; None: undeclared, left to the runner's check after the first step)."""
    if suite.budget.kind != "nfe":
        return
    for m, cfg in configs.items():
        cost = cfg.nfe_per_step(suite.sampler)
        if cost is not None and cost > suite.budget.amount * (1 + BUDGET_TOLERANCE):
            raise BenchError(f"{m}: one outer step costs {cost} NFE (sampler.steps = {suite.sampler.steps}), more "
                             f"than the whole budget ({suite.budget.text}); give a larger --budget or a smaller batch")


def apply_model_defaults(suite: SuiteConfig) -> None:
    """The model's own sampler settings (MODEL_DEFAULTS[model]["sampler"], e.g. the testbed's guidance scale 2,
    the range its LCM was distilled over) where `--set` gave none."""
    from bench.registry.catalog import MODEL_DEFAULTS

    for name, value in MODEL_DEFAULTS.get(suite.model.name, {}).get("sampler", {}).items():
        if f"sampler.{name}" not in suite.explicit:
            setattr(suite.sampler, name, value)


def check_sections(suite: SuiteConfig) -> None:
    """The value rules of the shared sections (model, sampler, eval); method configs check their own."""
    from bench.registry.catalog import MODEL_DEFAULTS

    m, s, ev = suite.model, suite.sampler, suite.eval
    at_least("model.lora_rank", m.lora_rank, 0)
    positive("model.lora_alpha", m.lora_alpha)
    one_of("model.dtype", m.dtype, ("float32", "bfloat16", "float16"))
    at_least("model.resolution", m.resolution, 0)
    latent = MODEL_DEFAULTS.get(m.name, {}).get("latent")
    if m.resolution and latent is not None:  # (channels, decoder upsampling, native side)
        if not MODEL_DEFAULTS[m.name].get("resizable", False):
            raise BenchError(f"model.resolution: '{m.name}' draws at its one size, {latent[2]} px; leave it 0")
        if m.resolution % (8 * latent[1]):  # the UNet halves its latent three times
            raise BenchError(f"model.resolution must be a multiple of {8 * latent[1]} for '{m.name}', "
                             f"got {m.resolution}")
    at_least("sampler.steps", s.steps, 1)
    at_least("sampler.guidance_scale", s.guidance_scale, 1.0)
    at_least("sampler.original_inference_steps", s.original_inference_steps, s.steps)
    one_of("sampler.logprob_reduction", s.logprob_reduction, ("mean", "sum"))
    for f in ev.fractions:
        in_range("eval.fractions", f, 0.0, 1.0, open_low=True)
    for name, low in (("points", 0), ("samples_per_prompt", 1), ("min_images", 0), ("max_prompts", 0),
                      ("grid_images", 0)):
        at_least(f"eval.{name}", getattr(ev, name), low)
    at_least("checkpoint.every_steps", suite.checkpoint.every_steps, 0)
    at_least("checkpoint.every_minutes", suite.checkpoint.every_minutes, 0)


DENSE = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
"""The default evaluation schedule: front-loaded, so that a threshold crossed early (claim C1: compute to reach a
gold or proxy gain) is crossed between two measured points instead of on a straight line from the base model."""


def eval_schedule(ev: EvalConfig) -> list[float]:
    """The budget fractions a run is evaluated at (after the base model's 0), increasing, the last one 1."""
    if ev.fractions:
        return sorted({float(f) for f in ev.fractions} | {1.0})
    if ev.points > 0:
        return [i / ev.points for i in range(1, ev.points + 1)]
    return list(DENSE)


def split_prompts(suite: SuiteConfig) -> dict[str, list[str]]:
    """Every prompt split of the suite: the set's (or the model's default set's), or the user's files."""
    from bench.prompts.sets import SPLITS, load_prompts
    from bench.registry.catalog import MODEL_DEFAULTS

    default = suite.prompts.set or MODEL_DEFAULTS.get(suite.model.name, {}).get("prompts", "tiny")
    return {split: load_prompts(getattr(suite.prompts, split) or default, split) for split in SPLITS}


def eval_prompts(prompts: list[str], max_prompts: int) -> list[str]:
    """Every prompt, or `max_prompts` of them spread evenly over the list (first and last included)."""
    if max_prompts <= 0 or max_prompts >= len(prompts):
        return list(prompts)
    if max_prompts == 1:
        return [prompts[0]]
    step = (len(prompts) - 1) / (max_prompts - 1)
    return [prompts[round(i * step)] for i in range(max_prompts)]


def images_per_prompt(n_prompts: int, ev: EvalConfig) -> int:
    """Images drawn per prompt of a split: at least samples_per_prompt, and at least min_images in all."""
    return max(ev.samples_per_prompt, -(-ev.min_images // max(n_prompts, 1)))


def metrics_for(suite: SuiteConfig, reward: str) -> list[str]:
    """Metrics computed at every evaluation: the training reward first, then, for a weighted sum of rewards, each
    of its terms (bench/core/objective.py), then the rest, then kl-to-base."""
    from bench.registry.catalog import MODEL_DEFAULTS
    from bench.registry.lookup import expression

    chosen = list(suite.eval.metrics) or list(MODEL_DEFAULTS.get(suite.model.name, {}).get("metrics", []))
    obj = expression(reward)
    terms = [t for t in obj.labels if t != reward] if obj is not None else []  # each term is its own metric
    out = list(dict.fromkeys([reward, *terms, *chosen]))
    return out + (["kl-to-base"] if "kl-to-base" not in out else [])


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Budget):
        return obj.as_dict()
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_dict(x) for x in obj)
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
