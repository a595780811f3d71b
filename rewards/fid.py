"""FID and KID with clean-fid (Parmar et al. 2022) in its "clean" mode, as evaluation set metrics.

Features: clean-fid's TorchScript Inception (`InceptionV3W`, 2048-d pool features, `resize_inside=False` as
`build_feature_extractor("clean")` builds it) after clean-fid's clean resizer (PIL bicubic to 299x299 per channel
in float, no re-quantisation). Images are first quantised to uint8 (what an image saved as PNG holds, and what
clean-fid reads from a folder), so generated images and a folder of real ones go through the same steps.
The weights come from the torch hub cache (`bench fetch inception`), never from clean-fid's own download.

Reference set: by default the base model's images on the same evaluation prompts (`set_reference(images,
prompts)`, kept per prompt set, so the training and held-out splits each have their own); optionally a folder of
real images (`reference_dir=`, read with clean-fid's own folder loader).

Numbers: `fid_from_feats` (its `frechet_distance`) and `kernel_distance` are clean-fid's. With fewer images
than the feature dimension on either side the covariances are singular and the Fréchet distance is meaningless
(often complex), so `fid` then warns and reports KID instead, and says so in its version string (written into
every result row).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.api import BenchError, SetMetric
from rewards import weights

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, 299, 299) in [0, 255] -> (B, D)


def inception_features(device: str | torch.device = "cpu") -> FeatureFn:
    """clean-fid's clean-mode feature extractor, with its weights from the local cache."""
    from cleanfid.inception_torchscript import InceptionV3W

    path = weights.url_file("inception")
    model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
    return lambda x: model(x.to(device))


def clean_resize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, 299, 299) float in [0, 255]: uint8 quantisation, then clean-fid's
    `build_resizer("clean")` on each (H, W, 3) image, as its dataset loader does."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return torch.from_numpy(np.stack([resize(a) for a in arr])).permute(0, 3, 1, 2).contiguous()


class CleanFID(SetMetric):
    """FID (clean-fid, Inception, clean mode) to the base model's images on the same prompts; KID if too few."""

    name, higher_is_better = "fid", False
    base_version = "clean-fid-0.1.35/inception-2015-12-05"

    def __init__(self, device: str | torch.device = "cpu", *, reference_dir: str | Path | None = None,
                 feature_fn: FeatureFn | None = None, batch_size: int = 32, seed: int = 0):
        """`feature_fn`: tests pass a tiny stand-in for Inception; every other step is the same."""
        self.device = torch.device(device)
        self.features_of = feature_fn or inception_features(self.device)
        self.batch_size, self.seed = batch_size, seed
        self.reference_dir = Path(reference_dir) if reference_dir else None
        self._references: dict[frozenset[str], np.ndarray] = {}
        self._folder_feats: np.ndarray | None = None
        self.version = f"{self.base_version}/{self.name}"
        self.reset()

    # -- features ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) in [0, 1] -> (B, D) float64 features."""
        out = [self.features_of(clean_resize(images[i:i + self.batch_size])).cpu().double().numpy()
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0))

    def folder_features(self) -> np.ndarray:
        """Features of every image in `reference_dir`, through clean-fid's own folder loader (computed once)."""
        if self._folder_feats is None:
            from cleanfid.fid import get_folder_features

            if not self.reference_dir.is_dir():
                raise BenchError(f"fid reference folder {self.reference_dir} does not exist")
            fn = lambda x: self.features_of(x)  # noqa: E731 clean-fid calls model(batch) with [0, 255] batches
            self._folder_feats = get_folder_features(str(self.reference_dir), model=fn, num_workers=0,
                                                     batch_size=self.batch_size, device=self.device, mode="clean",
                                                     verbose=False).astype(np.float64)
        return self._folder_feats

    # -- reference --------------------------------------------------------------------------------------
    @property
    def needs_base_reference(self) -> bool:
        """True unless a folder of real images is the reference: the caller must `set_reference` base images."""
        return self.reference_dir is None

    def set_reference(self, images: torch.Tensor, prompts: list[str]) -> None:
        """Base-model images for a prompt set; `compute` uses them for images drawn on the same prompts."""
        self._references[frozenset(prompts)] = self.embed(images)

    def reference_features(self) -> np.ndarray:
        if self.reference_dir is not None:
            return self.folder_features()
        key = frozenset(self._prompts)
        if key not in self._references:
            raise BenchError(f"{self.name}: no reference images for these {len(key)} prompts; call "
                             f"set_reference(base-model images, prompts) first or give a reference folder")
        return self._references[key]

    # -- SetMetric --------------------------------------------------------------------------------------
    def reset(self):
        self._feats: list[np.ndarray] = []
        self._prompts: list[str] = []

    def update(self, images, prompts):
        self._feats.append(self.embed(images))
        self._prompts += list(prompts)

    def features(self) -> np.ndarray:
        return np.concatenate(self._feats) if self._feats else np.zeros((0, 0))

    def kid(self, gen: np.ndarray, ref: np.ndarray) -> float:
        from cleanfid.fid import kernel_distance

        state = np.random.get_state()  # kernel_distance draws its subsets from numpy's global generator
        np.random.seed(self.seed)
        try:
            return kernel_distance(gen, ref)
        finally:
            np.random.set_state(state)

    def compute(self):
        from cleanfid.fid import fid_from_feats

        gen, ref = self.features(), self.reference_features()
        if min(len(gen), len(ref)) < 2:
            raise BenchError(f"{self.name}: needs at least 2 images on each side, got {len(gen)} and {len(ref)}")
        dim = gen.shape[1]
        if min(len(gen), len(ref)) <= dim:
            # n samples give a covariance of rank <= n - 1 < dim: a Fréchet distance here is not FID.
            warnings.warn(f"{self.name}: {len(gen)} generated and {len(ref)} reference images for {dim}-d features; "
                          f"covariances are singular, reporting KID instead of FID", stacklevel=2)
            self.version = f"{self.base_version}/kid(n<={dim})"
            return self.kid(gen, ref)
        self.version = f"{self.base_version}/{self.name}"
        return float(fid_from_feats(gen, ref))  # clean-fid: means, np.cov, frechet_distance


class CleanKID(CleanFID):
    """KID (clean-fid, Inception, clean mode, cubic kernel) to the base model's images on the same prompts."""

    name = "kid"

    def compute(self):
        gen, ref = self.features(), self.reference_features()
        if min(len(gen), len(ref)) < 2:
            raise BenchError(f"{self.name}: needs at least 2 images on each side, got {len(gen)} and {len(ref)}")
        return self.kid(gen, ref)
