"""The testbed's small evaluator networks and their safetensors I/O.

- `AttributeClassifier`: reads digit, ink and background off an image (the alignment reward, CLIP analogue,
  and the judge of the generator's attribute accuracy).
- `PreferenceNet`: the learned preference proxy (PickScore analogue): image + prompt attributes -> scalar,
  deliberately smaller than the classifier and trained on few pairs, so it can be exploited.
- `FeatureNet`: the encoder of a small autoencoder; its 32-d code is the feature space of FID and diversity.
  No reward uses it, so optimising a reward cannot directly game the quality metric.

All take images (B, 3, 16, 16) in [0, 1]. Weights are stored as safetensors (never pickle) with the network's
config as JSON in the file's metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from bench.core.errors import BenchError

WEIGHTS_DIR = Path(__file__).parent / "weights"
PROXY_B_NAME = "proxy_b"  # the second preference proxy's weights file (testbed-pref-b); the first's is "proxy"
N_ATTR = 10 + 4 + 3  # digit, ink, background classes


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(4, c_out), nn.SiLU())


@dataclass
class ClassifierSpec:
    width: int = 32  # channels of the first conv; doubled after each of the two stride-2 convs


class AttributeClassifier(nn.Module):
    """(B, 3, 16, 16) -> logits (B, 17) = [digit 10 | ink 4 | background 3]."""

    def __init__(self, spec: ClassifierSpec = ClassifierSpec()):
        super().__init__()
        w = spec.width
        self.body = nn.Sequential(_conv(3, w), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w), _conv(2 * w, 4 * w, 2),
                                  nn.Flatten(), nn.Linear(4 * w * 16, 128), nn.SiLU(), nn.Linear(128, N_ATTR))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * 2 - 1)

    @staticmethod
    def split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 17) -> digit (B, 10), ink (B, 4), background (B, 3) logits."""
        return logits[:, :10], logits[:, 10:14], logits[:, 14:]


@dataclass
class PreferenceSpec:
    width: int = 16  # conv channels (half the classifier's: the proxy is the weaker model)
    hidden: int = 64  # MLP width after concatenating the 17-d prompt-attribute code


class PreferenceNet(nn.Module):
    """(B, 3, 16, 16), attribute one-hot (B, 17) -> preference score (B,)."""

    def __init__(self, spec: PreferenceSpec = PreferenceSpec()):
        super().__init__()
        w = spec.width
        self.conv = nn.Sequential(_conv(3, w, 2), _conv(w, 2 * w, 2), nn.Flatten())  # (B, 2w * 4 * 4)
        self.head = nn.Sequential(nn.Linear(2 * w * 16 + N_ATTR, spec.hidden), nn.SiLU(), nn.Linear(spec.hidden, 1))

    def forward(self, images: torch.Tensor, attr_one_hot: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(images * 2 - 1), attr_one_hot], dim=1))[:, 0]


@dataclass
class FeatureSpec:
    width: int = 32  # conv channels
    dim: int = 32  # feature (code) dimension: low, so a Fréchet distance is well-defined with a few hundred images


class FeatureNet(nn.Module):
    """Autoencoder; `encode` (B, 3, 16, 16) -> (B, dim) features, `decode` back to images."""

    def __init__(self, spec: FeatureSpec = FeatureSpec()):
        super().__init__()
        w = spec.width
        self.encoder = nn.Sequential(_conv(3, w, 2), _conv(w, 2 * w, 2), nn.Flatten(), nn.Linear(2 * w * 16, spec.dim))
        self.decoder = nn.Sequential(nn.Linear(spec.dim, 2 * w * 16), nn.Unflatten(1, (2 * w, 4, 4)), nn.SiLU(),
                                     nn.Upsample(scale_factor=2), _conv(2 * w, w), nn.Upsample(scale_factor=2),
                                     nn.Conv2d(w, 3, 3, 1, 1), nn.Sigmoid())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(images))


# ---- safetensors I/O ----------------------------------------------------------------------------------------
def save_weights(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"config": json.dumps(config)})


def weights_digest(weights_dir: Path | None = None) -> dict[str, str]:
    """{file name: sha256 hex} of every shipped weights file (`*.safetensors`): which testbed made a result."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((weights_dir or WEIGHTS_DIR).glob("*.safetensors"))}


def load_weights(name: str, weights_dir: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, config) of `weights_dir/name.safetensors`; a missing file names the command that rebuilds it."""
    path = (weights_dir or WEIGHTS_DIR) / f"{name}.safetensors"
    if not path.is_file():
        raise BenchError(f"testbed weights not found: {path}; rebuild them with `python -m bench.testbed.build`")
    try:
        with safe_open(str(path), framework="pt") as f:
            config = json.loads((f.metadata() or {}).get("config", "{}"))
        return load_file(str(path)), config
    except (SafetensorError, json.JSONDecodeError, OSError) as e:
        raise BenchError(f"testbed weights {path} are unreadable ({str(e).splitlines()[0]}); rebuild them with "
                         "`python -m bench.testbed.build`") from None


def save_module(path: Path, module: nn.Module, spec, extra: dict[str, torch.Tensor] | None = None) -> None:
    """A network's state dict (prefixed "net.") plus extra tensors, its spec dataclass as config."""
    tensors = {f"net.{k}": v for k, v in module.state_dict().items()} | (extra or {})
    save_weights(path, tensors, asdict(spec))


def load_module(name: str, cls: type[nn.Module], spec_cls: type, weights_dir: Path | None = None):
    """-> (module in eval mode, frozen; extra tensors not under "net.")."""
    tensors, config = load_weights(name, weights_dir)
    module = cls(spec_cls(**config))
    module.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    module.eval().requires_grad_(False)
    return module, {k: v for k, v in tensors.items() if not k.startswith("net.")}
