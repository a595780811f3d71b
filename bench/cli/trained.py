"""Using a trained run: `bench export` (its LoRA for diffusers) and `bench sample` (images for your own prompts)."""

from __future__ import annotations

from pathlib import Path

import typer

from bench.cli.common import app


@app.command()
def export(run_dir: Path = typer.Argument(..., help="A completed run folder: SUITE/runs/<method>__<reward>__seed<s>."),
           out: Path = typer.Option(..., help="New folder for the LoRA (must not exist, or be empty).")) -> None:
    """Write a run's trained LoRA in the diffusers format (pytorch_lora_weights.safetensors) that
    `pipe.load_lora_weights(OUT, weight_name=...)` loads: LatentConsistencyModelPipeline for lcm-dreamshaper-v7,
    StableDiffusionPipeline with LCM-LoRA fused for lcm-lora-sd15 (OUT/USAGE.md has the code)."""
    from bench.run.trained import export as export_lora

    files = export_lora(run_dir, out)
    print(f"wrote {', '.join(str(f) for f in files)}; load with pipe.load_lora_weights(\"{out}\", "
          f"weight_name=\"{files[0].name}\") (the code for this model: {out / 'USAGE.md'})")


@app.command()
def sample(run_dir: Path = typer.Argument(..., help="A completed run folder: SUITE/runs/<method>__<reward>__seed<s>."),
           prompt: list[str] = typer.Option(..., help="A prompt (repeatable)."),
           n: int = typer.Option(8, help="Images per prompt."),
           out: Path = typer.Option(..., help="New folder (absent or empty) for the PNG images, grid.png and "
                                              "samples.json."),
           seed: int = typer.Option(0, help="Seed of the sampling noise (the same seed gives the same images)."),
           device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto.")) -> None:
    """Draw images for your own prompts from a run's trained model (any model, testbed and tiny included), with
    the sampler settings it was trained with."""
    from bench.run.trained import sample as sample_images

    files = sample_images(run_dir, list(prompt), n, out, seed=seed, device=device)
    print(f"wrote {len(files) - 2} images and {out / 'grid.png'}")
