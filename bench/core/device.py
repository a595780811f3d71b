"""Device names: `auto` picks CUDA where it is available; a CUDA device asked for on a machine without one is a
one-line error.
"""

from __future__ import annotations

import torch

from bench.core.errors import BenchError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device '{name}' requested but no CUDA device is available; use --device cpu")
    return torch.device(name)
