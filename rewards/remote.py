"""A reward served by another process over HTTP (docs/reward-server.md): `--rewards http://HOST:PORT/NAME`.

The reward lives wherever its own environment does (a detector, an OCR model, a VLM judge, or any reward of
this suite behind `bench serve-reward`); this client sends each batch's images on the uint8 grid with their
prompts and receives one float per image and the reward's version. It is not differentiable (pixels are
quantised and no gradient crosses HTTP), so first-order methods refuse it up front (bench/run/config.py) and the
policy-gradient and preference methods use it. The server's compute is not seen by the meter: a remote reward
charges `reward_calls` (images scored) but 0 FLOPs, so compare methods that use one under nfe or time budgets.

Options go in the URL's query string: `timeout` (seconds a connection or a read may wait, default 120),
`retries` (further attempts after a connection failure, a timeout or HTTP 502/503/504, default 2, waiting 0.5 s,
1 s, 2 s, ...), `batch` (images per request, default 32) and `format` (`png` or `uint8`, default png). Every
failure is a one-line BenchError: the server down, too slow, answering with an error, with the wrong number of
scores, a non-finite score or a changed version. No score is ever made up: the run stops, and re-running the
suite redoes it (bench/run/runner.py moves the interrupted run aside).
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

import torch

from bench.api import BenchError, Reward
from bench.core.reward_protocol import FORMATS, PROTOCOL, encode_images, to_uint8

RETRY_STATUS = (502, 503, 504)  # a proxy or a server that is (re)starting: worth another attempt
BACKOFF_S = 0.5  # wait before the first retry; doubled for each further one
LOOPBACK = ("localhost", "127.0.0.1", "::1")
# A server on this machine is reached directly even where http_proxy is set (clusters often set one); others
# go through the environment's proxy settings as urllib reads them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_VIA_ENV = urllib.request.build_opener()


@dataclass(frozen=True)
class RemoteSettings:
    """Where the reward is served and how the client talks to it (parsed from the URL)."""

    endpoint: str  # scheme://host:port/NAME, without the query string
    reward: str  # NAME: the served reward's name
    port: int
    timeout_s: float = 120.0  # seconds a connection or one read of the answer may wait
    retries: int = 2  # further attempts after a connection failure, a timeout or HTTP 502/503/504
    batch: int = 32  # images per request
    format: str = "png"  # "png" (lossless files) or "uint8" (one raw array)

    @classmethod
    def parse(cls, url: str) -> RemoteSettings:
        parts = urllib.parse.urlsplit(url)
        bad = f"bad reward-server URL '{url}': "
        try:
            port = parts.port
        except ValueError:
            raise BenchError(bad + "the port must be a number in 1-65535") from None
        name = parts.path.strip("/")
        if not parts.hostname or not port or not name or "/" in name:
            raise BenchError(bad + "expected http://HOST:PORT/NAME, e.g. http://127.0.0.1:8000/aesthetic")
        fields = {"timeout": ("timeout_s", float), "retries": ("retries", int), "batch": ("batch", int),
                  "format": ("format", str)}
        values = {}
        for key, text in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key not in fields:
                raise BenchError(bad + f"unknown option '{key}'; known: {', '.join(fields)}")
            field, typ = fields[key]
            try:
                values[field] = typ(text)
            except ValueError:
                raise BenchError(bad + f"{key}={text} is not a {typ.__name__}") from None
        settings = cls(f"{parts.scheme}://{parts.netloc}/{name}", name, port, **values)
        if not (settings.timeout_s > 0 and settings.retries >= 0 and settings.batch >= 1):
            raise BenchError(bad + "timeout must be > 0, retries >= 0, batch >= 1")
        if settings.format not in FORMATS:
            raise BenchError(bad + f"format must be one of {', '.join(FORMATS)}")
        return settings


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _detail(raw: bytes) -> str:
    """The server's error message: FastAPI's {"detail": ...}, or the body itself."""
    try:
        return _one_line(json.loads(raw).get("detail", raw.decode(errors="replace")))
    except (ValueError, AttributeError):
        return _one_line(raw.decode(errors="replace"))


def request(settings: RemoteSettings, body: dict | None = None) -> dict:
    """GET (body None) or POST one JSON request to the endpoint, with timeouts and bounded retries."""
    where = settings.endpoint
    data = None if body is None else json.dumps(body).encode()
    attempts, last = settings.retries + 1, ""
    slow = f"no answer within {settings.timeout_s:g} s (raise ?timeout= in the URL if it is just slow)"
    for attempt in range(attempts):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        req = urllib.request.Request(where, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            opener = _DIRECT if urllib.parse.urlsplit(where).hostname in LOOPBACK else _VIA_ENV
            with opener.open(req, timeout=settings.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code in RETRY_STATUS:
                last = f"HTTP {e.code}: {_detail(e.read())}"
                continue
            if e.code == 404:
                raise BenchError(f"reward server {where}: no reward '{settings.reward}' is served there (HTTP 404); "
                                 f"check the NAME in the URL") from None
            raise BenchError(f"reward server {where} answered HTTP {e.code}: {_detail(e.read())}") from None
        except (TimeoutError, socket.timeout):
            last = slow
            continue
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                last = slow
            else:
                last = (f"not reachable ({_one_line(getattr(e.reason, 'strerror', None) or e.reason)}); is it "
                        f"running? start it with: bench serve-reward {settings.reward} --port {settings.port}")
            continue
        except (ConnectionError, http.client.HTTPException, OSError) as e:  # reset or closed mid-answer
            last = f"connection lost ({_one_line(e) or type(e).__name__})"
            continue
        try:
            answer = json.loads(raw)
        except ValueError:
            raise BenchError(f"reward server {where} answered with something that is not JSON: "
                             f"{_one_line(raw.decode(errors='replace'), 80)}") from None
        if not isinstance(answer, dict):
            raise BenchError(f"reward server {where} answered {type(answer).__name__}, expected a JSON object")
        return answer
    raise BenchError(f"reward server {where} failed {attempts} time{'s' * (attempts > 1)}: {last}")


def server_info(settings: RemoteSettings) -> dict:
    """GET the endpoint: the served reward's name, version, direction and protocol version."""
    info = request(settings)
    if info.get("protocol") != PROTOCOL or not isinstance(info.get("version"), str):
        raise BenchError(f"reward server {settings.endpoint} speaks protocol {info.get('protocol')!r}, this client "
                         f"protocol {PROTOCOL} (docs/reward-server.md); expected name, version, higher_is_better")
    return info


class RemoteReward(Reward):
    """A reward served over HTTP by `bench serve-reward` or any server of the protocol (not differentiable)."""

    name, version, differentiable = "remote", "0", False
    settings: RemoteSettings

    def score(self, images, prompts):
        s, scores = self.settings, []
        for i in range(0, len(prompts), s.batch):
            chunk, texts = images[i:i + s.batch], list(prompts[i:i + s.batch])
            answer = request(s, {"prompts": texts, **encode_images(to_uint8(chunk), s.format)})
            got = answer.get("scores")
            if not isinstance(got, list) or len(got) != len(texts):
                n = len(got) if isinstance(got, list) else "no"
                raise BenchError(f"reward server {s.endpoint} returned {n} scores for {len(texts)} images; "
                                 f"no score is made up, the run stops")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in got):
                raise BenchError(f"reward server {s.endpoint} returned a missing or non-finite score "
                                 f"({_one_line(got, 80)}); no score is made up, the run stops")
            if answer.get("version") != self.version:
                raise BenchError(f"reward server {s.endpoint} now serves version {answer.get('version')!r}, the run "
                                 f"started with {self.version!r}; results would mix two rewards")
            scores.extend(float(x) for x in got)
        return torch.tensor(scores, dtype=torch.float32, device=self.device)


def remote_class(url: str) -> type[RemoteReward]:
    """A RemoteReward subclass for `url`, named by it, with the server's version and direction (asked now, so a
    server that is down fails before anything runs)."""
    settings = RemoteSettings.parse(url)
    info = server_info(settings)
    return type("RemoteReward", (RemoteReward,), {
        "name": url, "version": info["version"], "higher_is_better": bool(info.get("higher_is_better", True)),
        "settings": settings, "__doc__": f"{info.get('name', settings.reward)} served at {settings.endpoint}"})
