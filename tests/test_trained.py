"""Using a trained run (bench/run/trained.py): `bench export` writes a LoRA that diffusers' own pipeline loads and
samples exactly as the bench sampler does with the trained adapter (same initial latents, same step noise), and
`bench sample` draws images for new prompts; bad folders and torn adapters are one-line errors."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.core.compute import Budget
from bench.core.errors import BenchError
from bench.core.sampler import sample
from bench.run.config import SuiteConfig, apply_sets
from bench.run.runner import run_suite
from bench.run.trained import LORA_WEIGHTS, export, load_policy, open_run
from bench.run.trained import sample as sample_run
from tests.test_hub import (  # noqa: F401 - hf_cache: a fixture
    SNAPSHOT,
    cache_repo,
    hf_cache,
    save_tiny_lcm,
    save_tiny_sd15_with_lcm_lora,
    write_model_index,
)

TINY_RUN = ["eval.points=1", "eval.max_prompts=1", "eval.samples_per_prompt=1", "eval.min_images=0",
            "method.batch_size=2"]


def train(out, model, sets=()):
    """One short rocm-kl run on `model` with the toy brightness reward; its run folder."""
    suite = SuiteConfig(methods=["rocm-kl"], rewards=["brightness"], seeds=[0], budget=Budget.parse("60nfe"))
    suite.model.name = model
    apply_sets(suite, [*TINY_RUN, "eval.metrics=brightness", *sets])
    (run_dir,) = run_suite(suite, out, show_progress=False)
    return run_dir


def make_lora_visible(run_dir):
    """A few training steps leave lora_B ~ 0; give it weights large enough that the LoRA changes every image."""
    path = run_dir / "adapter.safetensors"
    state = load_file(str(path))
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) * 0.2 if ".lora_B." in k else v for k, v in state.items()}
    save_file(state, str(path))


@pytest.mark.parametrize("model", ["lcm-dreamshaper-v7", "lcm-lora-sd15"])
def test_exported_lora_draws_the_bench_samplers_images_in_diffusers(model, hf_cache, tmp_path,  # noqa: F811
                                                                    monkeypatch):
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, StableDiffusionPipeline
    from diffusers.schedulers import scheduling_lcm

    from bench.models.hub import DREAMSHAPER, LCM_LORA_SD15, SD15

    if model == "lcm-dreamshaper-v7":
        base = cache_repo(hf_cache, DREAMSHAPER)
        save_tiny_lcm(base)
        write_model_index(base, "LatentConsistencyModelPipeline")
    else:
        save_tiny_sd15_with_lcm_lora(hf_cache)
        base = hf_cache / f"models--{SD15.replace('/', '--')}" / "snapshots" / SNAPSHOT
    # lora_alpha 4 with rank 8: the export must fold the 0.5 scale in (loaders assume alpha = rank).
    run_dir = train(tmp_path / "suite", model, ["model.lora_alpha=4"])
    make_lora_visible(run_dir)
    files = export(run_dir, tmp_path / "lora")
    assert files[0].name == LORA_WEIGHTS and all(f.stat().st_size > 0 for f in files)
    assert all(k.startswith("unet.") and ".default." not in k for k in load_file(str(files[0])))

    run = open_run(run_dir)
    policy = load_policy(run)
    prompts = ["a photo of a cat", "a dog on the grass"]
    traj = sample(policy, prompts, run.sampler, torch.Generator().manual_seed(0))  # (2, 4, 8, 8) latents

    # The user's route, as USAGE.md writes it: the public pipeline class from the base model's folder.
    if model == "lcm-dreamshaper-v7":
        pipe = LatentConsistencyModelPipeline.from_pretrained(base, safety_checker=None, feature_extractor=None,
                                                              requires_safety_checker=False)
        kwargs = {"guidance_scale": run.sampler.guidance_scale,
                  "original_inference_steps": run.sampler.original_inference_steps}
    else:
        pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config,
                                                  original_inference_steps=run.sampler.original_inference_steps)
        lcm_lora = hf_cache / f"models--{LCM_LORA_SD15.replace('/', '--')}" / "snapshots" / SNAPSHOT
        pipe.load_lora_weights(lcm_lora, weight_name=LORA_WEIGHTS, adapter_name="lcm")
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        kwargs = {"guidance_scale": 1.0}  # no guidance embedding, no classifier-free guidance: as bench samples

    def draw(output_type):
        steps = iter(traj.noise.unbind(1))  # the bench's z_n of each noisy step, (2, 4, 8, 8)
        monkeypatch.setattr(scheduling_lcm, "randn_tensor", lambda shape, **kw: next(steps).to(kw["dtype"]))
        with torch.no_grad():
            return pipe(prompts, num_inference_steps=run.sampler.steps, latents=traj.states[:, 0].clone(),
                        output_type=output_type, **kwargs).images

    base_x0 = draw("latent")
    # named: offline, diffusers does not guess the file
    pipe.load_lora_weights(tmp_path / "lora", weight_name=LORA_WEIGHTS, adapter_name="rlhf")
    x0, images = draw("latent"), draw("pt")
    torch.testing.assert_close(x0, traj.x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(images, traj.images, rtol=1e-5, atol=1e-5)
    assert (base_x0 - traj.x0).abs().max() > 1e-2  # the LoRA matters: without it the pipeline draws otherwise


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A trained run of the tiny model (read only: tests that damage a run train their own)."""
    return train(tmp_path_factory.mktemp("tiny") / "suite", "tiny")


def test_bench_sample_writes_images_and_a_grid(tiny_run, tmp_path):
    from PIL import Image

    run_dir = tiny_run
    out = tmp_path / "samples"
    files = sample_run(run_dir, ["a red circle", "a blue square"], 3, out, seed=5)
    pngs = sorted(out.glob("[0-9]*.png"))
    assert len(pngs) == 6 and (out / "grid.png").stat().st_size > 0 and len(files) == 8
    assert Image.open(pngs[0]).size == (16, 16)
    meta = json.loads((out / "samples.json").read_text())
    assert [i["prompt"] for i in meta["images"]] == ["a red circle"] * 3 + ["a blue square"] * 3
    again = sample_run(run_dir, ["a red circle", "a blue square"], 3, tmp_path / "again", seed=5)
    other = sample_run(run_dir, ["a red circle", "a blue square"], 3, tmp_path / "other", seed=6)
    assert pngs[0].read_bytes() == again[0].read_bytes() != other[0].read_bytes()  # seeded, and the seed matters
    with pytest.raises(BenchError, match="already exists and is not empty"):
        sample_run(run_dir, ["a red circle"], 1, out)


def test_export_and_sample_commands(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from bench.cli.main import app

    run_dir = tiny_run
    cli = CliRunner()
    done = cli.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "lora")])
    assert done.exit_code == 0 and "load_lora_weights" in done.output, done.output
    assert (tmp_path / "lora" / LORA_WEIGHTS).exists() and "load_lora_adapter" in (tmp_path / "lora" / "USAGE.md").read_text()
    done = cli.invoke(app, ["sample", str(run_dir), "--prompt", "a red circle", "--prompt", "a blue square", "--n", "2",
                            "--out", str(tmp_path / "s"), "--seed", "1", "--device", "cpu"])
    assert done.exit_code == 0 and len(list((tmp_path / "s").glob("*.png"))) == 5, done.output


def test_bad_run_folders_and_torn_adapters_are_one_line_errors(tmp_path):
    run_dir = train(tmp_path / "suite", "tiny")
    with pytest.raises(BenchError, match="run folder not found"):
        open_run(tmp_path / "nothing")
    with pytest.raises(BenchError, match="holds runs; give one of them"):
        open_run(tmp_path / "suite")
    with pytest.raises(BenchError, match="already exists and is not empty"):
        export(run_dir, run_dir)
    (run_dir / "adapter.safetensors").write_bytes((run_dir / "adapter.safetensors").read_bytes()[:100])
    with pytest.raises(BenchError, match="corrupt adapter file"):
        export(run_dir, tmp_path / "lora")
    assert not (tmp_path / "lora").exists()
    (run_dir / "adapter.safetensors").unlink()
    with pytest.raises(BenchError, match="has no trained adapter"):
        export(run_dir, tmp_path / "lora")
    p = subprocess.run([sys.executable, "-m", "bench.cli.main", "sample", str(run_dir), "--prompt", "a cat", "--out",
                        str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "has no trained adapter" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
