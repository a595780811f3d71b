"""The results schema: what the runner writes into a suite folder and what the report reads, typed and versioned.

Imports no torch (the report reads results through this module and bench.results.io). docs/results-format.md
describes every file and field for readers outside Python. The layout of one suite folder::

    SUITE/manifest.json                 Manifest: the suite's settings and every command that contributed to it
    SUITE/runs/<run_id>/config.json     RunConfig: the resolved config of one run (method x reward x seed)
    SUITE/runs/<run_id>/train.jsonl     TrainRow per outer training step (append-only)
    SUITE/runs/<run_id>/eval.jsonl      EvalRow per (evaluation point, split, metric) (append-only)
    SUITE/runs/<run_id>/samples/frac{f:.2f}.png   an image grid of the reported split at each evaluation point
    SUITE/runs/<run_id>/adapter.safetensors       the trained adapter (the policy's trainable state dict)
    SUITE/runs/<run_id>/summary.json    Summary, written last: its presence means the run completed
    SUITE/standardisation.json          Normaliser per standardised reward z(NAME) the suite used, by name: the
                                        suite's one record, which every run of it uses
    SUITE/runs/<run_id>/standardisation.json   the Normalisers this run used (only where it used a z(NAME))
    SUITE/runs/<run_id>/checkpoint.pt   the run's state at its last mid-run checkpoint (bench/run/checkpoint.py),
                                        deleted once summary.json is written; <log>.after-checkpoint: rows a
                                        resume cut from train.jsonl / eval.jsonl
    SUITE/runs/<run_id>.interrupted-<k>/  an interrupted attempt without a usable checkpoint, moved aside (never
                                          deleted) when it is redone

``run_id`` is ``{method}__{reward}__seed{seed}`` (bench.results.io.run_id).

Two version numbers, both written into every manifest and run config: ``protocol`` (the evaluation protocol,
docs/protocol.md: what was measured and how) and ``schema`` (SCHEMA_VERSION: how it is written down). Readers
take every older schema: ``from_json`` fills what an older writer did not record, so published folders are read
as they are and never rewritten.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError

SCHEMA_VERSION = 1
"""Version of the file layout. 0 (no "schema" field, folders made before it existed): the manifest holds one
command at its top level (argv, git, versions, device, created), the last one that wrote it, and, in hand-merged
folders, "merged_from". 1: the manifest's "commands" lists every command that contributed to the suite, in order."""

COMMAND_FIELDS_V0 = ("argv", "git", "versions", "device", "created")  # a schema-0 manifest's one command


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def _number(value: Any, kind: type, default: Any) -> Any:
    """`kind(value)`, or `default` for a missing or malformed value (readers take what an older writer left)."""
    try:
        return kind(value) if value is not None else default
    except (TypeError, ValueError):
        return default


@dataclass
class Command:
    """One command that contributed to a suite folder: `bench run`, `bench run --from-sweep`, a sweep trial."""

    argv: list[str]
    """The command line as typed (bench run …); [] where an old folder did not record it."""
    time: str = ""
    """When it started: local time, ISO 8601 with its UTC offset (e.g. 2026-12-01T12:00:00+0000)."""
    git: str | None = None
    """`git describe --always --dirty --abbrev=40` of the package's checkout ("<sha>-dirty" with local
    changes); None when the package is not a git checkout."""
    versions: dict[str, str] = field(default_factory=dict)
    """Package versions: python, torch, diffusers, transformers, peft."""
    device: str = ""
    """The device it trained on, in words (the GPU's name, or "cpu (<processor>, <n> threads)")."""
    methods: list[str] = field(default_factory=list)
    """The methods, rewards and seeds this command asked for (the suite's are the union over its commands)."""
    rewards: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    note: str = ""
    """Anything else worth knowing, e.g. that its runs were made in another folder and copied in."""
    weights: dict[str, str] = field(default_factory=dict)
    """{file name: sha256} of the testbed's shipped weights when the model or a reward is the testbed's ({}
    otherwise, and in folders made before it was recorded)."""

    @classmethod
    def from_json(cls, data: Any) -> "Command":
        d = _dict(data)
        return cls(argv=[str(a) for a in _list(d.get("argv"))], time=str(d.get("time") or d.get("created") or ""),
                   git=d.get("git") or None, versions={str(k): str(v) for k, v in _dict(d.get("versions")).items()},
                   device=str(d.get("device") or ""), methods=[str(m) for m in _list(d.get("methods"))],
                   rewards=[str(r) for r in _list(d.get("rewards"))], seeds=_list(d.get("seeds")),
                   note=str(d.get("note") or ""),
                   weights={str(k): str(v) for k, v in _dict(d.get("weights")).items()})


@dataclass
class Manifest:
    """SUITE/manifest.json: the suite's settings and its history. Written by bench.run.runner.write_manifest."""

    config: dict[str, Any]
    """The suite config (bench.run.config.to_dict of SuiteConfig): model, sampler, eval, prompts, budget, method_sets,
    device, and methods, rewards, seeds as the union over every command (a folder is extended by running more
    methods, rewards or seeds into it with otherwise identical settings)."""
    commands: list[Command] = field(default_factory=list)
    """Every command that contributed, oldest first (a resumed command appears once per invocation)."""
    protocol: int | None = None
    """The evaluation protocol (docs/protocol.md); None where not recorded (protocol 1)."""
    created: str = ""
    """When the first command started (ISO 8601)."""
    schema: int = SCHEMA_VERSION

    @property
    def budget(self) -> dict[str, Any]:
        """{"kind": "nfe" | "flops" | "seconds", "amount": float, "text": as given} of every run; {} if unknown."""
        return _dict(self.config.get("budget"))

    @property
    def seeds(self) -> list[int]:
        return _list(self.config.get("seeds"))

    @property
    def model(self) -> str | None:
        return _dict(self.config.get("model")).get("name")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, path: Path | str = "manifest.json") -> "Manifest":
        """Any schema. Schema 0: the top-level command becomes the last entry of `commands`, after the
        "merged_from" entries of a hand-merged folder (their order is unknown; they carry a note)."""
        if not isinstance(data, dict):
            raise BenchError(f"bad manifest {path}: expected a JSON object")
        schema = _number(data.get("schema", 0), int, None)
        if schema is None:
            raise BenchError(f"bad manifest {path}: schema '{data.get('schema')}' is not an integer")
        if schema > SCHEMA_VERSION:
            raise BenchError(f"manifest {path} has schema {schema}, newer than this package's {SCHEMA_VERSION}: "
                             f"update cm-rlhf-bench to read it")
        config = _dict(data.get("config"))
        if schema >= 1:
            commands = [Command.from_json(c) for c in _list(data.get("commands"))]
        else:
            merged = [Command.from_json(m) for m in _list(data.get("merged_from"))]
            last = Command.from_json({k: data.get(k) for k in COMMAND_FIELDS_V0})
            commands = merged + ([last] if last.argv or last.git or last.time else [])
        return cls(config=config, commands=commands, protocol=_number(data.get("protocol"), int, None),
                   created=str(data.get("created") or (commands[0].time if commands else "")), schema=SCHEMA_VERSION)


@dataclass
class RunConfig:
    """SUITE/runs/<run_id>/config.json: everything that determines one run, written before it starts."""

    method: str
    reward: str
    """The training reward."""
    seed: int
    budget: dict[str, Any] = field(default_factory=dict)
    """As Manifest.budget."""
    protocol: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    """bench.core.policy.ModelConfig: name, lora_rank, lora_alpha, lora_targets, dtype, resolution, unet_checkpointing."""
    sampler: dict[str, Any] = field(default_factory=dict)
    """bench.core.sampler.SamplerConfig: steps, guidance_scale, logprob_reduction, checkpointing,
    original_inference_steps."""
    eval: dict[str, Any] = field(default_factory=dict)
    """bench.run.config.EvalConfig."""
    eval_images_per_prompt: dict[str, int] = field(default_factory=dict)
    """Images drawn per prompt of each evaluated split."""
    method_config: dict[str, Any] = field(default_factory=dict)
    """The method's resolved config dataclass (defaults < registry entry < --set), e.g. beta, lr, batch_size."""
    method_class: str = ""
    """"module:Class" of the method's implementation."""
    metrics: list[str] = field(default_factory=list)
    """Every metric evaluated, the training reward first and kl-to-base last."""
    prompts: dict[str, list[str]] = field(default_factory=dict)
    """The prompts of every split: train, validation, test."""
    device: str = ""
    processes: int = 1
    """Data-parallel processes (accelerate launch) the run trained on."""
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, path: Path | str = "config.json") -> "RunConfig":
        d = _dict(data)
        try:
            method, reward, seed = str(d["method"]), str(d["reward"]), int(d["seed"])
        except (KeyError, TypeError, ValueError):
            raise BenchError(f"bad run config {path}: needs method, reward and an integer seed") from None
        return cls(method=method, reward=reward, seed=seed, budget=_dict(d.get("budget")),
                   protocol=_number(d.get("protocol"), int, None),
                   model=_dict(d.get("model")), sampler=_dict(d.get("sampler")), eval=_dict(d.get("eval")),
                   eval_images_per_prompt=_dict(d.get("eval_images_per_prompt")),
                   method_config=_dict(d.get("method_config")), method_class=str(d.get("method_class") or ""),
                   metrics=_list(d.get("metrics")), prompts=_dict(d.get("prompts")), device=str(d.get("device") or ""),
                   processes=_number(d.get("processes"), int, 1), schema=_number(d.get("schema"), int, 0))


@dataclass
class Normaliser:
    """One standardised reward's μ₀ and σ₀ (bench/run/standardise.py): z(NAME) = (NAME − mean) / std. A
    standardisation.json file maps each "z(NAME)" to one of these."""

    reward: str
    """NAME, the reward standardised."""
    version: str
    """NAME's version when it was measured."""
    mean: float
    """μ₀: the mean of NAME over the images."""
    std: float
    """σ₀: their standard deviation (n − 1 in the denominator)."""
    n_images: int
    """Images scored: the same number for every training prompt, at least bench.run.standardise.MIN_IMAGES."""
    n_prompts: int
    """Training prompts they were drawn for (every one of the suite's training split)."""
    seed: int
    """Seed of their noise (the suite's eval.seed + 2: other noise than the evaluation's and FID's reference)."""
    model: str = ""
    """The base model they were drawn from, with its adapters off, through the suite's sampler settings."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, path: Path | str = "standardisation.json") -> Normaliser:
        d = _dict(data)
        try:
            return cls(reward=str(d["reward"]), version=str(d["version"]), mean=float(d["mean"]), std=float(d["std"]),
                       n_images=int(d["n_images"]), n_prompts=int(d["n_prompts"]), seed=int(d["seed"]),
                       model=str(d.get("model") or ""))
        except (KeyError, TypeError, ValueError):
            raise BenchError(f"bad normaliser in {path}: needs reward, version, mean, std, n_images, n_prompts "
                             f"and seed") from None


def read_normalisers(data: Any, path: Path | str = "standardisation.json") -> dict[str, Normaliser]:
    """A standardisation.json file's {"z(NAME)": Normaliser}."""
    if not isinstance(data, dict):
        raise BenchError(f"bad {path}: expected a JSON object of normalisers by reward")
    return {str(k): Normaliser.from_json(v, path) for k, v in data.items()}


COUNTER_KEYS = ("nfe", "nfe_forward", "nfe_backward", "nfe_recompute", "reward_calls", "images", "seconds", "flops",
                "flops_denoiser", "flops_decoder", "flops_reward", "flops_text", "flops_value", "flops_recompute",
                "nfe_eq")
"""bench.core.compute.ComputeMeter.counters(), summed over processes: nfe (denoiser evaluations per sample, a backward
counted as 2) = nfe_forward + 2 nfe_backward; nfe_recompute (denoiser forwards redone only to save memory, e.g.
by the sampler's per-step checkpointing: in no count budget); reward_calls (images scored); images (images
sampled); seconds (device time of training work, recomputation included); flops (every training forward and
backward) = flops_denoiser + flops_decoder + flops_reward + flops_text + flops_value (a learned value function);
flops_recompute (FLOPs of the forwards redone to save memory, not in flops); nfe_eq (flops in units of one policy
denoiser forward of one sample). Rows written before a counter existed lack it (read as 0)."""


@dataclass
class TrainRow:
    """One line of train.jsonl: an outer training step's cumulative counters and the method's scalar logs."""

    step: int
    """1-based outer step."""
    budget_used: float
    """Fraction of the budget spent after this step."""
    counters: dict[str, float]
    """COUNTER_KEYS, cumulative."""
    logs: dict[str, float]
    """The method's own scalars (reward_mean, loss, grad_norm, divergence, per_prompt_share, …; methods/*.py)."""

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, **self.counters, "budget_used": self.budget_used, **self.logs}


@dataclass
class EvalRow:
    """One line of eval.jsonl: one metric on one split at one evaluation point."""

    step: int
    """Outer steps done when it was taken (0: the base model)."""
    fraction: float
    """The nominal evaluation point k/points: 0.0 the base model, 1.0 where the run stopped."""
    budget_used: float
    """The fraction of the budget really spent."""
    nfe: float
    seconds: float
    flops: float
    nfe_eq: float
    """Compute spent when it was taken (COUNTER_KEYS)."""
    split: str
    """"train", "validation" or "test" (protocol-1 folders: "train" and "heldout")."""
    metric: str
    version: str
    """The metric's version (bumped when its score of the same images changes)."""
    higher_is_better: bool
    value: float
    """Mean over images (a set metric's own value: FID, diversity)."""
    stderr: float
    """Standard error over images (a set metric's own estimate, or 0)."""
    n: int
    """Images the value is computed from."""
    n_prompts: int
    n_images: int
    """Prompts and images of the split that were evaluated."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


EVAL_REQUIRED = ("fraction", "nfe", "seconds", "split", "metric", "higher_is_better", "value")
"""EvalRow fields every folder has, protocol 1 included: the report refuses rows without them."""
EVAL_OPTIONAL = ("stderr", "flops", "budget_used", "n", "n_prompts", "n_images")
"""EvalRow fields the report reads that older folders may lack (read as NaN)."""


@dataclass
class Summary:
    """summary.json, written last (atomically): the run completed. Its final counters and values."""

    steps: int
    """Outer steps done."""
    counters: dict[str, float]
    """COUNTER_KEYS at the end."""
    budget_used: float
    reported_split: str
    """The split of `final` and of the sample grids: test (reported runs) or validation (sweep trials)."""
    final: dict[str, float]
    """Every metric's value on the reported split at the last evaluation point."""
    wall_seconds: float = 0.0
    """Wall-clock time of the run, evaluation included."""
    processes: int = 1
    status: str = "complete"
    warmup_seconds: float = 0.0
    """Time budgets: the uncharged warm-up step taken before the clock started (bench/run/budget.py); else 0."""

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "steps": self.steps, **self.counters, "processes": self.processes,
                "budget_used": self.budget_used, "reported_split": self.reported_split,
                "wall_seconds": self.wall_seconds, "warmup_seconds": self.warmup_seconds,
                f"final_{self.reported_split}": self.final}

    @classmethod
    def from_json(cls, data: Any) -> "Summary":
        """Any schema; an old summary without reported_split has its final values under final_test/heldout."""
        d = _dict(data)
        split = str(d.get("reported_split") or next((k[len("final_"):] for k in d if k.startswith("final_")), ""))
        return cls(steps=_number(d.get("steps"), int, 0), counters={k: d[k] for k in COUNTER_KEYS if k in d},
                   budget_used=_number(d.get("budget_used"), float, 0.0), reported_split=split,
                   final=_dict(d.get(f"final_{split}")), wall_seconds=_number(d.get("wall_seconds"), float, 0.0),
                   processes=_number(d.get("processes"), int, 1), status=str(d.get("status") or "complete"),
                   warmup_seconds=_number(d.get("warmup_seconds"), float, 0.0))
