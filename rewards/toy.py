"""Toy rewards for the tiny random models and CI: cheap, exact, and with known optima.

`brightness` and `colorfulness` are differentiable (first-order methods can use them); `jpeg-compressibility`
is not (it is DDPO's classic: the negative JPEG file size), so only policy-gradient methods can train on it.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from bench.reward import Reward, SetMetric


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


class JpegCompressibility(Reward):
    """Negative JPEG size in kB at quality 95, as DDPO's compressibility reward (not differentiable)."""

    name, version, differentiable = "jpeg-compressibility", "1", False

    def score(self, images, prompts):
        arr = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        sizes = []
        for a in arr:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="JPEG", quality=95)
            sizes.append(-buf.tell() / 1000.0)
        return torch.tensor(sizes, dtype=torch.float32, device=images.device)


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
