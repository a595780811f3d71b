"""`bench serve-reward NAME`: any registered reward behind the reward-server protocol (docs/reward-server.md),
with FastAPI and uvicorn, bound to 127.0.0.1 unless `--host` says otherwise.

Routes, one reward per server: `GET /NAME` answers what is served (protocol, name, version, higher_is_better,
max_batch); `POST /NAME` scores a batch (prompts plus PNG or raw uint8 images) and answers one float per image
and the version. Scoring runs under `torch.no_grad()` and one lock (uvicorn serves requests from a thread pool;
the model is not re-entrant). A malformed request is HTTP 422 with a one-line `detail`; a reward that fails is
HTTP 500 with its message. The server never answers a score it did not compute.
"""

from __future__ import annotations

import math
import socket
import threading

import torch

from bench.core.errors import BenchError
from bench.core.reward import Reward
from bench.core.reward_protocol import PROTOCOL, ProtocolError, decode_images, from_uint8


def make_app(reward: Reward, max_batch: int = 256):
    """The FastAPI application serving `reward` at /{reward.name}."""
    from fastapi import Body, FastAPI, HTTPException

    app = FastAPI(title=f"reward server: {reward.name}", docs_url=None, redoc_url=None)
    lock = threading.Lock()
    path = "/" + reward.name

    @app.get(path)
    def info() -> dict:
        return {"protocol": PROTOCOL, "name": reward.name, "version": reward.version,
                "higher_is_better": reward.higher_is_better, "differentiable": False, "max_batch": max_batch}

    @app.post(path)
    def score(body: dict = Body(...)) -> dict:
        prompts = body.get("prompts")
        try:
            arr = decode_images(body)  # (B, H, W, 3) uint8
        except ProtocolError as e:
            raise HTTPException(422, str(e)) from None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts) or len(prompts) != len(arr):
            raise HTTPException(422, f"prompts must be a list of {len(arr)} strings, one per image")
        if not 1 <= len(arr) <= max_batch:
            raise HTTPException(422, f"a request holds 1 to {max_batch} images, got {len(arr)}")
        with lock, torch.no_grad():
            try:
                scores = reward(from_uint8(arr, reward.device), prompts).float().cpu().tolist()
            except (BenchError, ValueError, RuntimeError) as e:
                raise HTTPException(500, f"{reward.name} failed: {' '.join(str(e).split())}") from None
        if not all(math.isfinite(s) for s in scores):
            raise HTTPException(500, f"{reward.name} produced a non-finite score")
        return {"scores": scores, "version": reward.version}

    return app


class RewardServer:
    """A bound socket and the uvicorn server for `reward`; `port=0` takes a free port (read `.port`)."""

    def __init__(self, reward: Reward, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 256):
        if not 0 <= port <= 65535:
            raise BenchError(f"--port must be in 0-65535, got {port}")
        if max_batch < 1:
            raise BenchError(f"--max-batch must be >= 1, got {max_batch}")
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
        except OSError as e:
            raise BenchError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self.host, self.port = host, self.sock.getsockname()[1]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}/{reward.name}"
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(make_app(reward, max_batch), log_level="warning",
                                                    timeout_graceful_shutdown=5))

    def run(self) -> None:
        """Serve until stopped (Ctrl-C, or `stop()` from another thread)."""
        self.server.run(sockets=[self.sock])

    def stop(self) -> None:
        self.server.should_exit = True


def serve(name: str, host: str, port: int, device: str, max_batch: int) -> None:
    """Build registered reward `name` (weights from the cache, as in a run) and serve it until interrupted."""
    from bench.core.device import resolve_device
    from bench.registry.lookup import is_remote, reward_class

    if is_remote(name):
        raise BenchError(f"serve a registered reward (`bench ls`), not another server's URL: {name}")
    cls = reward_class(name)
    server_reward = cls(resolve_device(device))
    server = RewardServer(server_reward, host, port, max_batch)
    print(f"serving {name} (version {server_reward.version}) at {server.url}; stop with Ctrl-C", flush=True)
    server.run()
