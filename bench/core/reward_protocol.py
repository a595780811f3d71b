"""The reward-server wire format (docs/reward-server.md), shared by the client (rewards/remote.py) and the server
(bench/serve/server.py): batches of uint8 RGB images, as PNG files or one raw array, plus their prompts, in JSON.

Images travel on the uint8 grid, quantised as DDPO and RLCM quantise before their non-differentiable rewards:
`(x * 255).round().clamp(0, 255)`; the server divides by 255 again. So a reward that itself works on uint8 pixels
(JPEG size, any PIL-based model) scores exactly what it would in process.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

PROTOCOL = 1  # bump on any incompatible change of the request or response fields
FORMATS = ("png", "uint8")


class ProtocolError(ValueError):
    """A request or response that does not follow the protocol (the message says which field is wrong)."""


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounded and clipped as DDPO/RLCM do (no gradient)."""
    return (images.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(arr: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.require(arr, requirements=["C", "W"])).to(device).permute(0, 3, 1, 2).float() / 255.0


def encode_images(arr: np.ndarray, fmt: str) -> dict:
    """(B, H, W, 3) uint8 -> the request's image fields: `images` (B base64 PNGs) or `shape` + `data`."""
    if fmt == "png":
        files = []
        for a in arr:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            files.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        return {"format": "png", "images": files}
    if fmt == "uint8":
        return {"format": "uint8", "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}
    raise ProtocolError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")


def decode_images(body: dict) -> np.ndarray:
    """The request's image fields -> (B, H, W, 3) uint8; a ProtocolError says what is malformed."""
    fmt = body.get("format", "png")
    try:
        if fmt == "png":
            arrays = []
            for i, text in enumerate(body.get("images") or []):
                with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as im:
                    if im.mode != "RGB":
                        raise ProtocolError(f"image {i} is a {im.mode} PNG, expected RGB")
                    arrays.append(np.asarray(im, dtype=np.uint8))
            if len({a.shape for a in arrays}) > 1:
                raise ProtocolError("the images of one request must all have the same size")
            return np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
        if fmt == "uint8":
            shape = tuple(int(s) for s in body.get("shape") or ())
            if len(shape) != 4 or shape[3] != 3 or min(shape) < 0:
                raise ProtocolError(f"shape must be [B, H, W, 3], got {list(shape)}")
            data = base64.b64decode(body.get("data") or "", validate=True)
            if len(data) != int(np.prod(shape)):
                raise ProtocolError(f"data holds {len(data)} bytes, shape {list(shape)} needs {int(np.prod(shape))}")
            return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    except (ValueError, OSError) as e:  # bad base64, not a PNG
        if isinstance(e, ProtocolError):
            raise
        raise ProtocolError(f"undecodable {fmt} images: {e}") from None
    raise ProtocolError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")
