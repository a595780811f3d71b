"""The testbed world's images: real handwritten digits (scikit-learn), upscaled to 16x16 and coloured.

An image is `bg * (1 - m) + ink * m`, where m in [0, 1] (16, 16) is a digit's stroke intensity (the 8x8
`load_digits` image / 16, bilinear-upscaled) and ink, bg are the prompted colours of `world_prompts`, each
jittered by a small uniform amount per image so colours form a continuous distribution, as in real photos.
The grammar and the splits live in `world_prompts` (torch-free); this module turns them into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from bench.prompts.testbed import BACKGROUNDS, DIGITS, HELDOUT_IMAGES, INKS, make_prompt, parse_prompt

SIZE = 16  # pixels per side
COLOUR_JITTER = 0.04  # half-width of the uniform per-channel jitter of ink and background colours
INK_NAMES, BG_NAMES = list(INKS), list(BACKGROUNDS)
INK_RGB = torch.tensor(list(INKS.values()))  # (4, 3)
BG_RGB = torch.tensor(list(BACKGROUNDS.values()))  # (3, 3)


@lru_cache(maxsize=1)
def digit_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: stroke masks (N, 16, 16) in [0, 1] and labels (N,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    small = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    masks = F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
    return masks, torch.tensor(data.target, dtype=torch.long)


@dataclass
class Attributes:
    """Integer attribute indices of a batch of prompts: digit (B,) in 0..9, ink (B,) in 0..3, bg (B,) in 0..2."""

    digit: torch.Tensor
    ink: torch.Tensor
    bg: torch.Tensor

    def one_hot(self) -> torch.Tensor:
        """(B, 17) concatenated one-hot codes of digit, ink, background."""
        return torch.cat([F.one_hot(self.digit, 10), F.one_hot(self.ink, len(INK_NAMES)),
                          F.one_hot(self.bg, len(BG_NAMES))], dim=1).float()


def attributes(prompts: list[str], device: torch.device | str = "cpu") -> Attributes:
    """Parse prompts (BenchError outside the grammar) into attribute indices."""
    parsed = [parse_prompt(p) for p in prompts]
    to = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return Attributes(to([d for d, _, _ in parsed]), to([INK_NAMES.index(i) for _, i, _ in parsed]),
                      to([BG_NAMES.index(b) for _, _, b in parsed]))


def colourise(masks: torch.Tensor, ink: torch.Tensor, bg: torch.Tensor, generator: torch.Generator | None,
              jitter: float = COLOUR_JITTER) -> torch.Tensor:
    """Masks (B, 16, 16) and colour indices (B,) -> images (B, 3, 16, 16) in [0, 1]."""
    b = masks.shape[0]
    ink_rgb, bg_rgb = INK_RGB[ink], BG_RGB[bg]  # (B, 3)
    if jitter > 0:
        ink_rgb = ink_rgb + (torch.rand(b, 3, generator=generator) * 2 - 1) * jitter
        bg_rgb = bg_rgb + (torch.rand(b, 3, generator=generator) * 2 - 1) * jitter
    m = masks[:, None]
    return (bg_rgb[:, :, None, None] * (1 - m) + ink_rgb[:, :, None, None] * m).clamp(0, 1)


class DigitSampler:
    """Draws coloured real digits for given (digit, ink, background) combinations from a range of image ids."""

    def __init__(self, image_ids: range, combos: list[tuple[int, str, str]]):
        masks, labels = digit_masks()
        ids = torch.tensor(list(image_ids))
        self.masks, self.labels = masks[ids], labels[ids]
        self.by_digit = [torch.nonzero(self.labels == d)[:, 0] for d in range(10)]
        self.combos = combos

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """n images (n, 3, 16, 16) in [0, 1] and their prompts, combinations drawn uniformly."""
        pick = torch.randint(len(self.combos), (n,), generator=generator).tolist()
        prompts = [make_prompt(*self.combos[i]) for i in pick]
        return self.for_prompts(prompts, generator), prompts

    def rows_for(self, digits: list[int], generator: torch.Generator) -> torch.Tensor:
        """One random image row of each given digit: (B,) indices into `self.masks`."""
        return torch.stack([self.by_digit[d][torch.randint(len(self.by_digit[d]), (1,), generator=generator)[0]]
                            for d in digits])

    def for_prompts(self, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        """A real digit of each prompt's digit in its colours: (B, 3, 16, 16) in [0, 1]."""
        attr = attributes(prompts)
        return colourise(self.masks[self.rows_for(attr.digit.tolist(), generator)], attr.ink, attr.bg, generator)

    def all_colourings(self, pairs: list[tuple[str, str]],
                       generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """Every image in every colour pair: (len(ids) * len(pairs), 3, 16, 16) and prompts."""
        images, prompts = [], []
        for ink, bg in pairs:
            n = len(self.labels)
            images.append(colourise(self.masks, torch.full((n,), INK_NAMES.index(ink)),
                                    torch.full((n,), BG_NAMES.index(bg)), generator))
            prompts += [make_prompt(int(d), ink, bg) for d in self.labels]
        return torch.cat(images), prompts


def heldout_real(pairs: list[tuple[str, str]], seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """The FID reference set: held-out real digits (ids 1400..1796) in every given colour pair."""
    return DigitSampler(HELDOUT_IMAGES, []).all_colourings(pairs, torch.Generator().manual_seed(seed))


__all__ = ["SIZE", "DIGITS", "Attributes", "attributes", "colourise", "digit_masks", "DigitSampler", "heldout_real"]
