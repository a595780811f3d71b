"""Using a trained run: its policy rebuilt with the trained adapter, the LoRA exported for diffusers, and images
drawn for a user's own prompts (`bench export`, `bench sample`).

A completed run folder (bench/results/schema.py) holds config.json (the model and sampler settings) and
adapter.safetensors: the policy's trainable state dict, flat, with peft's names inside the UNet
("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.default.weight", ...; the whole UNet
under full fine-tuning, model.lora_rank=0). `bench export` writes it in the layout diffusers'
`load_lora_weights` reads (`pytorch_lora_weights.safetensors`, keys "unet.<module>.lora_A.weight" as
`StableDiffusionLoraLoaderMixin.save_lora_weights` writes them): LatentConsistencyModelPipeline for
lcm-dreamshaper-v7, StableDiffusionPipeline (LCMScheduler, LCM-LoRA fused first, as bench/models/hub.py builds it) for
lcm-lora-sd15, and any pipeline or UNet2DConditionModel of the run's UNet for the others. The LoRA scale
lora_alpha / lora_rank is folded into lora_B, so any loader's default scale (alpha = rank) gives the trained
model exactly.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.core.policy import ModelConfig, Policy
from bench.core.sampler import SamplerConfig
from bench.results import io as results
from bench.results import schema

ADAPTER = "adapter.safetensors"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' default weight_name for load_lora_weights


@dataclass
class TrainedRun:
    """A completed run folder: where it is, its config.json, and the model and sampler it trained with."""

    run_dir: Path
    config: schema.RunConfig
    model: ModelConfig
    sampler: SamplerConfig


def _dataclass_from(cls: type, values: dict, path: Path):
    """A config dataclass from its JSON dict (lists back to tuples where the field is a tuple)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k in fields:
            kwargs[k] = tuple(v) if isinstance(v, list) and str(fields[k].type).startswith("tuple") else v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise BenchError(f"bad run config {path}: {e}") from None


def open_run(run_dir: Path) -> TrainedRun:
    """A completed run folder, or a one-line error saying what the folder is instead."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchError(f"run folder not found: {run_dir}")
    path = run_dir / "config.json"
    if not path.exists():
        runs = sorted(p for p in [*run_dir.glob("*"), *run_dir.glob("runs/*")] if (p / "config.json").exists())
        if runs:
            raise BenchError(f"{run_dir} is not a run folder but holds runs; give one of them, e.g. {runs[0]}")
        raise BenchError(f"{run_dir} is not a run folder (no config.json); runs are SUITE/runs/<method>__<reward>__seed<s>")
    config = schema.RunConfig.from_json(results.read_json(path), path)
    if not (run_dir / ADAPTER).exists():
        raise BenchError(f"{run_dir} has no trained adapter ({ADAPTER}): the run did not complete; run the same "
                         f"`bench run` command again to finish it")
    model = _dataclass_from(ModelConfig, config.model, path)
    if not model.name:
        raise BenchError(f"bad run config {path}: no model name")
    return TrainedRun(run_dir, config, model, _dataclass_from(SamplerConfig, config.sampler, path))


def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """adapter.safetensors as a state dict; a torn or foreign file is a one-line error."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types, and OSError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BenchError(f"corrupt adapter file {path}: {reason}") from None


def load_policy(run: TrainedRun, device: str | torch.device = "cpu") -> Policy:
    """The run's base model with its trained adapter loaded, in eval mode on `device`."""
    from bench.registry.lookup import model_builder

    policy = model_builder(run.model.name)(run.model)
    state = read_adapter(run.run_dir / ADAPTER)
    expected = set(policy.trainable_state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise BenchError(f"{run.run_dir / ADAPTER} does not fit model '{run.model.name}' as config.json describes it "
                         f"({len(missing)} tensors missing, e.g. {missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]})")
    try:
        policy.load_trainable_state_dict(state)
    except RuntimeError as e:  # a shape mismatch
        raise BenchError(f"{run.run_dir / ADAPTER} does not fit model '{run.model.name}': "
                         f"{str(e).splitlines()[0]}") from None
    return policy.to(device).eval()


def diffusers_lora(policy: Policy) -> dict[str, torch.Tensor]:
    """The trained LoRA in diffusers' UNet naming (peft's, without the adapter name), with the scale
    lora_alpha / lora_rank folded into lora_B: <module>.lora_A.weight (r, in), <module>.lora_B.weight (out, r)."""
    from peft.utils import get_peft_model_state_dict

    cfg = policy.config
    scale = cfg.lora_alpha / cfg.lora_rank
    state = get_peft_model_state_dict(policy.unet)
    return {k: (v * scale if ".lora_B." in k else v).detach().cpu().contiguous() for k, v in state.items()}


def usage(run: TrainedRun, out: Path) -> str:
    """Python that loads the exported LoRA into the diffusers pipeline of the run's model (offline-safe: every
    load names its weight file)."""
    from bench.models.hub import DREAMSHAPER, LCM_LORA_SD15, SD15

    s = run.sampler
    weights = f'weight_name="{LORA_WEIGHTS}"'
    if run.model.name == "lcm-dreamshaper-v7":
        return ("from diffusers import LatentConsistencyModelPipeline\n"
                f'pipe = LatentConsistencyModelPipeline.from_pretrained("{DREAMSHAPER}", safety_checker=None)\n'
                f'pipe.load_lora_weights("{out}", {weights})\n'
                f'image = pipe("a photo of a cat", num_inference_steps={s.steps}, guidance_scale={s.guidance_scale}, '
                f"original_inference_steps={s.original_inference_steps}).images[0]\n")
    if run.model.name == "lcm-lora-sd15":
        return ("from diffusers import LCMScheduler, StableDiffusionPipeline\n"
                f'pipe = StableDiffusionPipeline.from_pretrained("{SD15}", safety_checker=None)\n'
                "pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, "
                f"original_inference_steps={s.original_inference_steps})\n"
                "# the base model as bench builds it: LCM-LoRA fused into SD 1.5\n"
                f'pipe.load_lora_weights("{LCM_LORA_SD15}", {weights}, adapter_name="lcm")\n'
                "pipe.fuse_lora()\npipe.unload_lora_weights()\n"
                f'pipe.load_lora_weights("{out}", {weights}, adapter_name="rlhf")\n'
                "# no guidance embedding and no classifier-free guidance (w = 1), as in training\n"
                f'image = pipe("a photo of a cat", num_inference_steps={s.steps}, guidance_scale=1.0).images[0]\n')
    return (f"# '{run.model.name}' has no public pipeline; load the LoRA into its UNet (a UNet2DConditionModel):\n"
            f'unet.load_lora_adapter("{out}", {weights}, prefix="unet")\n')


def new_folder(out: Path) -> Path:
    """`out` as a folder to write into: absent or empty, so that nothing already there is overwritten."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out} already exists and is not empty; choose another --out (nothing was changed)")
    return out


def export(run_dir: Path, out: Path) -> list[Path]:
    """Write the run's LoRA for diffusers into the new folder `out`: the weights, export.json (what it was trained
    on and how to sample it) and USAGE.md. Written into a temporary folder, then renamed: all or nothing."""
    from diffusers import StableDiffusionPipeline

    run = open_run(run_dir)
    out = new_folder(out)
    if run.model.lora_rank <= 0:
        raise BenchError(f"{run.run_dir} trained the whole UNet (model.lora_rank=0): there is no LoRA to export")
    policy = load_policy(run)
    lora = diffusers_lora(policy)
    info = {"run": str(run.run_dir.resolve()), "method": run.config.method, "reward": run.config.reward,
            "seed": run.config.seed, "model": dataclasses.asdict(run.model), "sampler": dataclasses.asdict(run.sampler),
            "weights": LORA_WEIGHTS, "lora_scale_folded": run.model.lora_alpha / run.model.lora_rank}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=lora, weight_name=LORA_WEIGHTS)
        results.write_json_atomic(tmp / "export.json", info)
        text = (f"# LoRA of {run.config.method} trained on {run.config.reward} (seed {run.config.seed})\n\n"
                f"Base model: {run.model.name}. Load it with diffusers:\n\n```python\n{usage(run, out)}```\n")
        results.write_bytes_atomic(tmp / "USAGE.md", text.encode())
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / LORA_WEIGHTS, out / "export.json", out / "USAGE.md"]


def sample(run_dir: Path, prompts: list[str], n: int, out: Path, seed: int = 0, device: str = "cpu") -> list[Path]:
    """`n` images per prompt from the trained model with the run's sampler (seeded noise): out/000.png, …, a grid
    of all of them (grid.png) and samples.json (which prompt and seed made each image)."""
    from bench.core.device import resolve_device
    from bench.run.evaluate import draw_images, image_grid_png

    if n < 1:
        raise BenchError(f"--n must be >= 1, got {n}")
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise BenchError('no prompt given: e.g. --prompt "a photo of a cat"')
    run = open_run(run_dir)
    out = new_folder(out)
    policy = load_policy(run, resolve_device(device))
    images, per_image = draw_images(policy, run.sampler, prompts, n, seed)  # (P·n, 3, H, W) in [0, 1]
    files = []
    for i, img in enumerate(images):
        files.append(out / f"{i:03d}.png")
        results.write_bytes_atomic(files[-1], png_bytes(img))
    results.write_bytes_atomic(out / "grid.png", image_grid_png(images, columns=n))
    results.write_json_atomic(out / "samples.json", {
        "run": str(run.run_dir.resolve()), "seed": seed, "sampler": dataclasses.asdict(run.sampler),
        "images": [{"file": f.name, "prompt": p} for f, p in zip(files, per_image)]})
    return [*files, out / "grid.png", out / "samples.json"]


def png_bytes(image: torch.Tensor) -> bytes:
    """One (3, H, W) image in [0, 1] as PNG bytes, at its own size."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()
