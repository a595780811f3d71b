"""Device names: `auto` picks CUDA where it is available; `cpu`, `cuda` and `cuda:N` name one. Anything else, a CUDA
device asked for on a machine without one, or an index past the last GPU is a one-line error.
"""

from __future__ import annotations

import re

import torch

from bench.core.errors import BenchError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(name: str) -> torch.device:
    """The torch device `name` (one of DEVICES) stands for on this machine, or a BenchError."""
    name = str(name).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", name):
        raise BenchError(f"unknown device '{name}': expected auto, cpu, cuda or cuda:N (N a GPU index)")
    if not torch.cuda.is_available():
        raise BenchError(f"device '{name}' requested but no CUDA device is available; use --device cpu")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise BenchError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    return device
