"""The reward-server protocol (docs/reward-server.md): `bench serve-reward` and `--rewards http://HOST:PORT/NAME`.

Servers run on 127.0.0.1 in a thread (uvicorn on a socket we bind) or, to be killed for real, as a `bench
serve-reward` subprocess. The served reward is `jpeg-incompressibility`: it quantises to uint8 itself, so served
over the wire it must score exactly what it scores in process, and DDPO must train identically through it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from bench.core.compute import Budget
from bench.core.errors import BenchError
from bench.core.policy import ModelConfig
from bench.registry.lookup import reward_class
from bench.run.config import SuiteConfig, apply_sets, validate
from bench.run.runner import run_suite
from bench.serve.server import RewardServer

NAME = "jpeg-incompressibility"
SETS = ["eval.points=2", "eval.max_prompts=2", "eval.samples_per_prompt=2", "eval.min_images=0",
        "method.prompts_per_step=2", "method.samples_per_prompt=2", "ddpo.train_batch_size=4"]


def start_thread(server) -> threading.Thread:
    """Run a RewardServer-like object (.run, .server.started) in a daemon thread until it is up."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    return thread


@pytest.fixture
def serve():
    """serve(reward=None, port=0, app=None) -> a started server (`.url`, `.port`); all stopped at teardown."""
    started = []

    def _serve(reward=None, port=0, app=None):
        server = RewardServer(reward or reward_class(NAME)(), port=port)
        if app is not None:  # a hand-written (misbehaving) server on the same socket
            import uvicorn

            server.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        started.append((server, start_thread(server)))
        return server

    yield _serve
    for server, thread in started:
        server.stop()
        thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def images(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(24, 32), mode="bilinear")


@pytest.mark.parametrize("fmt", ["png", "uint8"])
def test_round_trip_equals_the_in_process_reward(serve, fmt):
    server = serve()
    remote = reward_class(f"{server.url}?format={fmt}&batch=2")()  # 5 images: requests of 2, 2 and 1
    local = reward_class(NAME)()
    assert not remote.differentiable and remote.version == local.version and remote.higher_is_better
    x, prompts = images(), [f"p{i}" for i in range(5)]
    got = remote(x, prompts)
    assert got.shape == (5,) and torch.equal(got, local(x, prompts))
    assert remote.meter.reward_calls == 5


def test_bad_urls_and_a_server_that_is_down_give_one_line():
    for url, msg in [("http://127.0.0.1/x", "expected http://HOST:PORT/NAME"),
                     ("http://127.0.0.1:8000/", "expected http://HOST:PORT/NAME"),
                     ("http://127.0.0.1:8000/x?timeout=soon", "not a float"),
                     ("http://127.0.0.1:8000/x?colour=red", "unknown option 'colour'"),
                     ("http://127.0.0.1:8000/x?format=jpeg", "format must be")]:
        with pytest.raises(BenchError, match=msg):
            reward_class(url)
    port = free_port()
    t0 = time.time()
    with pytest.raises(BenchError) as e:
        reward_class(f"http://127.0.0.1:{port}/{NAME}?retries=1")
    msg = str(e.value)
    assert "failed 2 times" in msg and "not reachable" in msg and f"bench serve-reward {NAME} --port {port}" in msg
    assert "\n" not in msg and time.time() - t0 < 5


def test_first_order_methods_refuse_a_served_reward(serve):
    server = serve()
    suite = SuiteConfig(methods=["rocm-kl"], rewards=[server.url], seeds=[0], budget=Budget.parse("50nfe"),
                        model=ModelConfig(name="tiny"))
    with pytest.raises(BenchError, match="not differentiable"):
        validate(suite)


def misbehaving_app(scores, version="1", delay_s=0.0):
    """A server that answers the info route correctly and then `scores` (a function of the batch size)."""
    from fastapi import Body, FastAPI, Response

    app = FastAPI()

    @app.get("/" + NAME)
    def info():
        return {"protocol": 1, "name": NAME, "version": "1", "higher_is_better": True}

    @app.post("/" + NAME)
    def score(body: dict = Body(...)):
        if delay_s:
            time.sleep(delay_s)
        # json.dumps writes NaN as the bare token `NaN`, as Python servers do (FastAPI's encoder refuses it)
        return Response(json.dumps({"scores": scores(len(body["prompts"])), "version": version}),
                        media_type="application/json")

    return app


@pytest.mark.parametrize("scores, version, delay, msg", [
    (lambda n: [1.0] * (n - 1), "1", 0.0, "returned 2 scores for 3 images"),
    (lambda n: [1.0] * (n - 1) + [math.nan], "1", 0.0, "non-finite score"),
    (lambda n: [1.0] * (n - 1) + [None], "1", 0.0, "non-finite score"),
    (lambda n: [1.0] * n, "2", 0.0, "now serves version '2'"),
    (lambda n: [1.0] * n, "1", 1.5, "no answer within 0.3 s"),
])
def test_wrong_answers_stop_with_one_line(serve, scores, version, delay, msg):
    server = serve(app=misbehaving_app(scores, version, delay))
    remote = reward_class(f"{server.url}?timeout=0.3&retries=0")()
    with pytest.raises(BenchError, match=msg) as e:
        remote(images(3), ["a", "b", "c"])
    assert "\n" not in str(e.value)


def test_unknown_name_and_malformed_requests(serve):
    server = serve()
    with pytest.raises(BenchError, match="no reward 'aesthetic' is served there"):
        reward_class(server.url.replace(NAME, "aesthetic"))
    import urllib.error
    import urllib.request

    body = {"prompts": ["a"], "format": "uint8", "shape": [1, 2, 2, 3], "data": "AAAA"}  # 3 bytes, not 12
    req = urllib.request.Request(server.url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10)  # no http_proxy
    assert e.value.code == 422 and "needs 12" in json.loads(e.value.read())["detail"]


def suite_for(reward: str) -> SuiteConfig:
    suite = SuiteConfig(methods=["ddpo"], rewards=[reward], seeds=[0], budget=Budget.parse("60nfe"),
                        model=ModelConfig(name="tiny"), device="cpu")
    apply_sets(suite, SETS)
    return suite


def rows(run_dir: Path, name: str) -> list[tuple]:
    """(file, step, fraction, split, metric, value) of every train and eval row, the reward's name unified."""
    out = []
    for file in ("train.jsonl", "eval.jsonl"):
        for line in (run_dir / file).read_text().splitlines():
            r = json.loads(line)
            out.append((file, r["step"], r.get("fraction"), r.get("split"), "REWARD" if r.get("metric") == name
                        else r.get("metric"), r.get("value"), r.get("reward_mean"), r.get("loss")))
    return out


def test_ddpo_through_the_server_matches_in_process(serve, tmp_path):
    server = serve()
    (local_dir,) = run_suite(suite_for(NAME), tmp_path / "local", show_progress=False)
    (remote_dir,) = run_suite(suite_for(server.url), tmp_path / "remote", show_progress=False)
    assert remote_dir.name == "ddpo__http-127.0.0.1-%d-%s__seed0" % (server.port, NAME)
    local, remote = rows(local_dir, NAME), rows(remote_dir, server.url)
    assert len(local) > 6 and local == remote


def test_killed_server_stops_the_run_and_the_suite_resumes(serve, tmp_path):
    """A real `bench serve-reward` process is SIGKILLed after the first training step; the run stops with one
    line; with a server back on the same port, the same suite redoes the run (moving the attempt aside)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/{NAME}?retries=1"
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli.main", "serve-reward", NAME, "--port", str(port),
                             "--device", "cpu"], env=os.environ | {"OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, suite = tmp_path / "suite", suite_for(url)
    suite.budget = Budget.parse("150nfe")
    try:
        deadline = time.time() + 60
        while True:
            try:
                reward_class(url)
                break
            except BenchError:
                assert proc.poll() is None, proc.stdout.read()  # the server died on start: show why
                assert time.time() < deadline, "bench serve-reward did not answer within 60 s"
        train = out / "runs" / f"ddpo__http-127.0.0.1-{port}-{NAME}-retries-1__seed0" / "train.jsonl"

        def kill_after_first_step():
            while proc.poll() is None and not (train.exists() and train.read_text().strip()):
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_after_first_step, daemon=True)
        killer.start()
        with pytest.raises(BenchError) as e:
            run_suite(suite, out, show_progress=False)
        killer.join(10)
        assert "failed 2 times" in str(e.value) and "\n" not in str(e.value)
        assert not (train.parent / "summary.json").exists()
    finally:
        proc.kill()
        proc.wait(10)
    serve(port=port)  # the server is back (in process this time, same port)
    (run_dir,) = run_suite(suite, out, show_progress=False)
    assert (run_dir / "summary.json").exists()
    assert (run_dir.parent / f"{run_dir.name}.interrupted-1" / "train.jsonl").exists()


def test_a_served_reward_as_a_term_of_an_objective(serve):
    """`brightness+0.5*http://…/jpeg-incompressibility`: scores the weighted sum of the in-process rewards, policy-
    gradient methods take it, first-order ones refuse it naming the served term."""
    server = serve()
    expression = f"brightness+0.5*{server.url}"
    x = images()
    prompts = [f"p{i}" for i in range(len(x))]
    got = reward_class(expression)()(x, prompts)
    expected = reward_class("brightness")()(x, prompts) + 0.5 * reward_class(NAME)()(x, prompts)
    assert torch.allclose(got, expected, rtol=1e-6, atol=0)  # the served term scores exactly; float32 sum rounding
    for method, ok in (("ddpo", True), ("rocm-kl", False)):
        suite = SuiteConfig(methods=[method], rewards=[expression], seeds=[0], budget=Budget.parse("1000nfe"),
                            model=ModelConfig(name="tiny"))
        if ok:
            validate(suite)
        else:
            with pytest.raises(BenchError, match=f"its term {server.url} is not"):
                validate(suite)
