"""JPEG compressibility and incompressibility against DDPO's / RLCM's definition, recomputed here from its
description: pixels `(x * 255).round().clamp(0, 255)` as uint8, `PIL.Image.save(format="JPEG", quality=95)`, size
`buffer.tell() / 1000` in kB; compressibility is minus that size."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core.errors import BenchError
from bench.registry.catalog import REWARDS
from bench.registry.lookup import reward_class


def ddpo_kb(images: torch.Tensor) -> list[float]:
    out = []
    for a in (images * 255).round().clamp(0, 255).to(torch.uint8).numpy().transpose(0, 2, 3, 1):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=95)
        out.append(buf.tell() / 1000)
    return out


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 32, 48), 0.5)
    noise = torch.rand(1, 3, 32, 48, generator=g)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 6, generator=g), size=(32, 48), mode="bilinear")
    return torch.cat([flat, noise, smooth])


def test_registered_and_not_differentiable():
    for name in ("jpeg-compressibility", "jpeg-incompressibility"):
        assert name in REWARDS
        cls = reward_class(name)
        assert not cls.differentiable and cls.higher_is_better


def test_sizes_match_the_ddpo_recipe(images):
    inc, comp = reward_class("jpeg-incompressibility")(), reward_class("jpeg-compressibility")()
    expected = np.array(ddpo_kb(images))
    np.testing.assert_allclose(inc(images, ["p"] * 3).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(comp(images, ["p"] * 3).numpy(), -expected, rtol=0, atol=1e-6)
    # Known orderings: a flat image is the smallest file, uniform noise the largest; sizes are whole bytes.
    assert expected[0] < expected[2] < expected[1]
    assert np.allclose(expected * 1000, np.round(expected * 1000))
    # A flat image is almost all header (JFIF markers, two quality-95 quantisation tables, Huffman tables):
    # 0.649 kB here with the pinned pillow's libjpeg-turbo; uniform noise costs over a byte per pixel at quality 95.
    assert 0.55 < expected[0] < 0.75 and expected[1] > 32 * 48 / 1000
    # Out-of-range pixels clip to the uint8 grid as in DDPO (x * 255 rounded, then clamped).
    np.testing.assert_allclose(inc(images * 3 - 1, ["p"] * 3).numpy(), ddpo_kb(images * 3 - 1), atol=1e-6)


def test_first_order_methods_refuse_incompressibility():
    from bench.core.compute import Budget
    from bench.core.policy import ModelConfig
    from bench.run.config import SuiteConfig, validate

    suite = SuiteConfig(methods=["rocm-kl"], rewards=["jpeg-incompressibility"], seeds=[0],
                        budget=Budget.parse("100nfe"), model=ModelConfig(name="tiny"))
    with pytest.raises(BenchError, match="not differentiable"):
        validate(suite)
