"""Toy rewards for the tiny random models and CI: cheap, exact, and with known optima.

`brightness` and `colorfulness` are differentiable (first-order methods can use them); `jpeg-compressibility`
and `jpeg-incompressibility` are not (DDPO's and RLCM's classic tasks: minus and plus the JPEG file size), so only
policy-gradient and preference methods can train on them.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from bench.api import Reward, SetMetric
from bench.core.reward_protocol import to_uint8


class Brightness(Reward):
    """Mean pixel intensity in [0, 1] (differentiable; maximised by a white image)."""

    name, version, differentiable = "brightness", "1", True

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


class Colorfulness(Reward):
    """Hasler & Süsstrunk (2003) colourfulness on [0, 1] RGB (differentiable)."""

    name, version, differentiable = "colorfulness", "1", True

    def score(self, images, prompts):
        r, g, b = images[:, 0], images[:, 1], images[:, 2]
        rg, yb = r - g, 0.5 * (r + g) - b  # (B, H, W) opponent channels
        std = (rg.var(dim=(1, 2)) + yb.var(dim=(1, 2)) + 1e-8).sqrt()
        mean = (rg.mean(dim=(1, 2)) ** 2 + yb.mean(dim=(1, 2)) ** 2 + 1e-8).sqrt()
        return std + 0.3 * mean


JPEG_QUALITY = 95  # DDPO's and RLCM's setting for both JPEG rewards


def jpeg_kb(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B,) JPEG file sizes in kB (1000 bytes), as DDPO/RLCM measure them: pixels
    rounded to uint8, saved by PIL at `quality` (no gradient: the size is a count of bytes)."""
    sizes = []
    for a in to_uint8(images):  # (H, W, 3) uint8
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


class JpegCompressibility(Reward):
    """Negative JPEG size in kB at quality 95, as DDPO's and RLCM's compressibility reward (not differentiable)."""

    name, version, differentiable = "jpeg-compressibility", "1", False

    def score(self, images, prompts):
        return -jpeg_kb(images)


class JpegIncompressibility(Reward):
    """JPEG size in kB at quality 95, as DDPO's and RLCM's incompressibility reward (not differentiable)."""

    name, version, differentiable = "jpeg-incompressibility", "1", False

    def score(self, images, prompts):
        return jpeg_kb(images)


class PixelDiversity(SetMetric):
    """Mean pairwise RMS pixel distance between images of the same prompt (collapse drives it to 0)."""

    name, version, higher_is_better = "diversity", "1", True

    def __init__(self, device="cpu"):
        self.reset()

    def reset(self):
        self._by_prompt: dict[str, list[np.ndarray]] = {}

    def update(self, images, prompts):
        for img, p in zip(images.detach().float().cpu().numpy(), prompts):
            self._by_prompt.setdefault(p, []).append(img.reshape(-1))

    def compute(self):
        dists = []
        for imgs in self._by_prompt.values():
            x = np.stack(imgs)
            for i in range(len(x)):
                for j in range(i + 1, len(x)):
                    dists.append(float(np.sqrt(np.mean((x[i] - x[j]) ** 2))))
        return float(np.mean(dists)) if dists else float("nan")
