"""Sweep knobs: every registered method declares well-formed knobs over its own config fields, its defaults lie
inside their ranges, relative knobs (ROCM's β) resolve around each entry's value, and `knobs_for` is what the
sweep tool reads."""

from __future__ import annotations

import dataclasses

import pytest

from bench.core.errors import BenchError
from bench.registry.catalog import METHODS
from bench.registry.lookup import knobs_for, method_class

SD_LATENT = 4 * 64 * 64


def resolved_config(name: str):
    cls, overrides = method_class(name)
    cfg = cls.Config(**overrides)
    cfg.resolve(name)
    return cfg


@pytest.mark.parametrize("name", sorted(METHODS))
def test_knobs_are_fields_with_well_formed_ranges_containing_the_defaults(name: str) -> None:
    cfg = resolved_config(name)
    fields = {f.name for f in dataclasses.fields(cfg)}
    knobs = knobs_for(name)
    assert "lr" in knobs
    for field, knob in knobs.items():
        assert field in fields, field
        value = getattr(cfg, field)
        if knob.choices:
            assert value in knob.choices, (field, value)
        else:
            assert 0 < knob.low < knob.high if knob.log else knob.low < knob.high
            assert knob.low <= value <= knob.high, (field, value, knob)


def test_method_specific_knobs() -> None:
    assert set(knobs_for("ddpo")) == {"lr", "clip_range", "samples_per_prompt"}
    assert set(knobs_for("d3po")) == {"lr", "beta"}
    assert set(knobs_for("rocm-none")) == {"lr"}  # β is fixed at 0 by the entry
    for name, (target, _) in METHODS.items():
        if target.startswith("methods.rocm") and name != "rocm-none":
            assert set(knobs_for(name)) == {"lr", "beta"}


def test_rocm_beta_range_is_relative_to_each_entry() -> None:
    kl, js = knobs_for("rocm-kl")["beta"], knobs_for("rocm-js")["beta"]
    assert (kl.low, kl.high, kl.log) == pytest.approx((1.0, 100.0, True))  # 0.1x to 10x of β = 10
    assert (js.low, js.high) == pytest.approx((4.0, 400.0))  # of β = 40
    # The class-level declaration is untouched (the registry returns resolved copies).
    from methods.rocm import ROCMConfig

    assert (ROCMConfig.KNOBS["beta"].low, ROCMConfig.KNOBS["beta"].high) == (0.1, 10.0)


def test_rocm_beta_range_follows_the_per_dimension_form_when_the_latent_size_is_given() -> None:
    js_sd = knobs_for("rocm-js", latent_dims=SD_LATENT)["beta"]  # auto: per-dimension on an SD latent
    assert (js_sd.low, js_sd.high) == pytest.approx((4.0 * SD_LATENT, 400.0 * SD_LATENT))
    assert knobs_for("rocm-js", latent_dims=3 * 16 * 16)["beta"] == knobs_for("rocm-js")["beta"]  # testbed
    assert knobs_for("rocm-kl", latent_dims=SD_LATENT)["beta"] == knobs_for("rocm-kl")["beta"]  # kl: whole-vector


def test_every_ddpo_group_size_choice_gives_a_valid_config() -> None:
    for k in knobs_for("ddpo")["samples_per_prompt"].choices:
        cls, overrides = method_class("ddpo")
        cfg = cls.Config(**overrides, samples_per_prompt=k)
        cfg.resolve("ddpo")
        assert cfg.batch_size == cfg.prompts_per_step * k and cfg.stat_min_count <= k


def test_unknown_method_is_a_bench_error() -> None:
    with pytest.raises(BenchError, match="did you mean 'ddpo'"):
        knobs_for("ddpoo")


@pytest.mark.parametrize("model", ["tiny", "tiny-vae", "testbed"])
def test_registered_latent_size_matches_the_built_model(model):
    import math

    from bench.core.policy import ModelConfig
    from bench.registry.catalog import latent_dims
    from bench.registry.lookup import model_builder

    policy = model_builder(model)(ModelConfig(name=model))
    assert latent_dims(model) == math.prod(policy.latent_shape)
    assert latent_dims("lcm-dreamshaper-v7") == 4 * 64 * 64 and latent_dims("lcm-dreamshaper-v7", 768) == 4 * 96 * 96
