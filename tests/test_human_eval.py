"""bench.human_eval: drawing from shared noise, the pair schedule, the vote store and its HTTP API, the analysis,
a kill of the server, the simulated rater on the testbed (Bradley-Terry order against mean gold), the report
section, and a real headless Chromium clicking through votes (marked `browser`, skipped without Chromium).

Suites are made by the real runner: the tiny model with two methods (a few seconds) for the API and the
browser, and the testbed with the base model, rocm-none (which hacks the proxy and loses gold) and ddpo at a
small budget for the simulated rater.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from bench.core.errors import BenchError
from bench.human_eval import analysis, db
from bench.human_eval.draw import BASE, DrawConfig, draw, read_index
from bench.human_eval.schedule import balanced_order
from bench.results.io import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TINY_METHODS = ["rocm-kl", "ddpo"]
TINY_SETS = ["eval.points=1", "eval.splits=test", "eval.min_images=8", "rocm-kl.batch_size=4",
             "ddpo.prompts_per_step=2", "ddpo.samples_per_prompt=2", "ddpo.train_batch_size=4"]
TESTBED_SETS = ["eval.points=1", "eval.splits=test", "eval.min_images=20"]
SIM_NOISE = 0.05


def make_suite(out: Path, model: str, methods: list[str], budget: str, sets: list[str]) -> Path:
    from bench.core.compute import Budget
    from bench.registry.catalog import MODEL_DEFAULTS
    from bench.run.config import SuiteConfig, apply_sets
    from bench.run.runner import run_suite

    suite = SuiteConfig(methods=methods, rewards=[MODEL_DEFAULTS[model]["reward"]], seeds=[0],
                        budget=Budget.parse(budget))
    suite.model.name = model
    apply_sets(suite, sets)
    run_suite(suite, out, argv=["bench", "run", "--model", model], show_progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> Path:
    """rocm-kl and ddpo on the tiny model, 200 NFE, drawn: 3 systems x 4 test prompts x 2 samples = 24 items."""
    out = make_suite(tmp_path_factory.mktemp("he") / "tiny", "tiny", TINY_METHODS, "200nfe", TINY_SETS)
    draw(out, DrawConfig(samples_per_prompt=2, device="cpu"), log=lambda _: None)
    return out


def fresh_copy(suite: Path, tmp_path: Path) -> Path:
    """The suite with its images but without votes (every test starts from an empty database)."""
    copy = tmp_path / "suite"
    shutil.copytree(suite, copy, ignore=shutil.ignore_patterns("votes.sqlite*"))
    return copy


def client(suite: Path, token: str | None = None):
    from fastapi.testclient import TestClient

    from bench.human_eval.app import create_app

    return TestClient(create_app(suite, token))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ drawing

def test_every_system_draws_from_the_same_noise(tiny_suite, tmp_path):
    """A run whose LoRA update is zero must give the base model's images pixel for pixel, (prompt, sample) by
    (prompt, sample): the noise depends only on the prompt and the sample, not on the system. It is added to an
    already drawn suite, so this is also the incremental path; ids and pages name no method."""
    suite = fresh_copy(tiny_suite, tmp_path)
    src = suite / "runs" / "rocm-kl__brightness__seed0"
    dst = suite / "runs" / "zero-lora__brightness__seed0"
    shutil.copytree(src, dst)
    state = load_file(str(src / "adapter.safetensors"))
    save_file({k: (v * 0 if "lora_B" in k else v) for k, v in state.items()}, str(dst / "adapter.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    write_json_atomic(dst / "config.json", {**cfg, "method": "zero-lora"})
    before = read_index(suite)["images"]
    index = draw(suite, DrawConfig(samples_per_prompt=2, device="cpu"), log=lambda _: None)
    assert {k: v for k, v in index["images"].items() if k in before} == before  # nothing redrawn
    png = {(v["system"], v["prompt"], v["sample"]): (suite / "human_eval" / "images" / f"{k}.png").read_bytes()
           for k, v in index["images"].items()}
    cells = [(p, s) for p in range(len(index["prompts"])) for s in range(2)]
    assert set(index["systems"]) == {BASE, "rocm-kl", "ddpo", "zero-lora"}
    assert all(png[("zero-lora", *c)] == png[(BASE, *c)] for c in cells)
    assert sum(png[("rocm-kl", *c)] != png[(BASE, *c)] for c in cells) == len(cells)  # training changed them
    assert len({png[(BASE, *c)] for c in cells}) == len(cells)  # every sample has its own noise
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in index["images"])
    with pytest.raises(BenchError, match="other settings"):
        draw(suite, DrawConfig(samples_per_prompt=3, device="cpu"))


# ----------------------------------------------------------------------------------------------- schedule

def test_schedule_is_balanced_at_every_round():
    systems, prompts, samples = ["a", "b", "c", "d"], 5, 2
    order = balanced_order(systems, prompts, samples, seed=3)
    pairs = 6
    assert len(order) == len({it.key for it in order}) == prompts * samples * pairs
    for r in range(1, prompts * samples + 1):  # after any number of whole rounds, each pair r times
        counts = Counter((it.a, it.b) for it in order[: r * pairs])
        assert set(counts.values()) == {r} and len(counts) == pairs
    for start in range(0, len(order), pairs):  # within a round the pairs are on distinct prompts (6 > 5: one repeat)
        assert len({it.prompt for it in order[start:start + pairs]}) >= prompts
    per_prompt = Counter(it.prompt for it in order[: prompts * pairs])
    assert max(per_prompt.values()) - min(per_prompt.values()) <= 2


# ----------------------------------------------------------------------------------------------- API + db

def test_votes_are_stored_once_and_bad_ids_refused(tiny_suite, tmp_path):
    suite = fresh_copy(tiny_suite, tmp_path)
    c = client(suite)
    page = c.get("/").text
    assert all(s not in page for s in ("rocm", "ddpo", "base"))
    pair = c.get("/api/next", params={"rater": "ann"}).json()
    assert pair["done"] == 0 and pair["total"] == 24 and not pair["finished"]
    assert c.get("/api/next", params={"rater": "ann"}).json()["pair_id"] == pair["pair_id"]  # a reload: same pair
    assert c.get("/" + pair["left"]).headers["content-type"] == "image/png"
    assert all(s not in json.dumps(pair) for s in ("rocm", "ddpo", "base"))
    vote = {"pair_id": pair["pair_id"], "submission_id": "s1", "rater": "ann", "choice": "left", "seconds": 1.5}
    first = c.post("/api/vote", json=vote)
    again = c.post("/api/vote", json=vote)  # a double click / a retry: one vote
    assert first.json() == {"recorded": True, "duplicate": False, "done": 1, "total": 24}
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert c.post("/api/vote", json={**vote, "submission_id": "s2"}).status_code == 409
    tampered = c.post("/api/vote", json={**vote, "pair_id": pair["pair_id"][:-2] + "xx", "submission_id": "s3"})
    assert tampered.status_code == 404 and "unknown pair id" in tampered.json()["detail"]
    nxt = c.get("/api/next", params={"rater": "ann"}).json()
    assert nxt["pair_id"] != pair["pair_id"] and nxt["done"] == 1
    assert c.post("/api/vote", json={**vote, "pair_id": nxt["pair_id"], "submission_id": "s4",
                                     "rater": "bob"}).status_code == 403  # served to another rater
    assert c.post("/api/vote", json={**vote, "pair_id": nxt["pair_id"], "submission_id": "s5",
                                     "choice": "both"}).status_code == 422
    assert c.get("/api/next", params={"rater": "<script>"}).status_code == 422
    assert c.get("/img/0123456789abcdef").status_code == 404
    rows = db.read_votes(db.db_path(suite))
    assert len(rows) == 1
    row = rows[0]
    assert row["rater"] == "ann" and row["choice"] == "left" and row["winner"] == row["left_system"]
    assert row["seconds"] == 1.5 and row["app_version"] and row["created"].endswith("Z")
    assert {row["left_system"], row["right_system"]} <= {BASE, *TINY_METHODS}
    with db.transaction(db.db_path(suite)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_token_is_required_when_set(tiny_suite, tmp_path):
    suite = fresh_copy(tiny_suite, tmp_path)
    c = client(suite, token="s3cret")
    assert c.get("/").status_code == 401
    assert c.get("/api/next", params={"rater": "ann"}, headers={"X-Token": "wrong"}).status_code == 401
    pair = c.get("/api/next", params={"rater": "ann", "token": "s3cret"}).json()
    assert c.get("/" + pair["left"]).status_code == 401
    assert c.get("/" + pair["left"], params={"token": "s3cret"}).status_code == 200
    assert c.post("/api/vote", headers={"X-Token": "s3cret"}, json={
        "pair_id": pair["pair_id"], "submission_id": "a", "rater": "ann", "choice": "tie"}).status_code == 200


def test_raters_at_once(tiny_suite, tmp_path):
    """Three raters voting at the same time through a real server: every vote stored, each rater on the same
    first items of the schedule (so their agreement can be measured), each item once per rater."""
    import threading

    import httpx

    from bench.human_eval.app import BackgroundServer, create_app

    suite = fresh_copy(tiny_suite, tmp_path)
    server = BackgroundServer(create_app(suite))
    failures = []

    def rate(name: str) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(12):
                pair = c.get("/api/next", params={"rater": name}).json()
                r = c.post("/api/vote", json={"pair_id": pair["pair_id"], "submission_id": f"{name}-{i}",
                                              "rater": name, "choice": "left"})
                if r.status_code != 200:
                    failures.append(r.text)

    threads = [threading.Thread(target=rate, args=(n,)) for n in ("r1", "r2", "r3")]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.stop()
    assert not failures
    votes = db.read_votes(db.db_path(suite))
    items = {n: [v["item"] for v in votes if v["rater"] == n] for n in ("r1", "r2", "r3")}
    assert len(votes) == 36 and all(len(set(i)) == 12 for i in items.values())
    assert items["r1"] == items["r2"] == items["r3"]
    assert analysis.analyse(suite)["rater_agreement"]["items"] == 12


def test_cli_refuses_bad_options(tiny_suite, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cases = [([str(tiny_suite), "--host", "0.0.0.0"], "--token"), ([str(tmp_path / "nope")], "not found"),
             ([str(tiny_suite), "--noise", "-1", "--simulate", "3"], "--noise")]
    for args, message in cases:
        r = subprocess.run([sys.executable, "-m", "bench", "human-eval", *args], capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode == 2 and r.stderr.startswith("error:") and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_killed_server_keeps_every_acknowledged_vote(tiny_suite, tmp_path):
    """`bench human-eval` in its own process; 10 votes acknowledged, then SIGKILL: all 10 are in the database."""
    import httpx

    suite = fresh_copy(tiny_suite, tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench", "human-eval", str(suite), "--port", str(port)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        for i in range(10):
            pair = httpx.get(url + "/api/next", params={"rater": "kim"}).json()
            r = httpx.post(url + "/api/vote", json={"pair_id": pair["pair_id"], "submission_id": f"k{i}",
                                                    "rater": "kim", "choice": ("left", "right", "tie")[i % 3]})
            assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    votes = db.read_votes(db.db_path(suite))
    assert [v["submission_id"] for v in votes] == [f"k{i}" for i in range(10)]
    assert [v["choice"] for v in votes] == [("left", "right", "tie")[i % 3] for i in range(10)]


# ------------------------------------------------------------------------------------------------ analysis

def test_statistics_on_known_answers():
    lo, hi = analysis.wilson(8, 10)  # the textbook value: 0.8, 95% Wilson interval (0.490, 0.943)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    rng = np.random.default_rng(0)
    truth = np.array([1.0, 0.0, -1.0])
    wins = np.zeros((3, 3))
    for _ in range(6000):
        i, j = rng.choice(3, 2, replace=False)
        p = 1 / (1 + math.exp(-(truth[i] - truth[j])))
        w, l = (i, j) if rng.random() < p else (j, i)
        wins[w, l] += 1
    assert np.allclose(analysis.bradley_terry(wins), truth, atol=0.08)
    assert np.all(np.isfinite(analysis.bradley_terry(np.array([[0, 30.0], [0, 0]]))))  # a clean sweep stays finite

    def v(item, rater, winner, left="x", right="y", choice=None):
        return {"item": item, "rater": rater, "winner": winner, "left_system": left, "right_system": right,
                "choice": choice or ("tie" if winner is None else "left" if winner == left else "right")}

    # Two raters, four items: agree on 3 (x, x, tie), disagree on 1. Fleiss: P̄ = 0.75, p = (4/8, 1/8, 3/8)
    # over (x wins, y wins, tie): P_e = 0.40625, kappa = (0.75 - 0.40625) / 0.59375.
    votes = [v("1", "r", "x"), v("1", "s", "x"), v("2", "r", "x"), v("2", "s", "x"), v("3", "r", None),
             v("3", "s", None), v("4", "r", "y"), v("4", "s", None)]
    agreement = analysis.rater_agreement(votes)
    assert agreement["items"] == 4 and agreement["agreement"] == 0.75
    assert math.isclose(agreement["fleiss_kappa"], (0.75 - 0.40625) / 0.59375)
    index = {"metrics": {"up": {"higher_is_better": True}, "down": {"higher_is_better": False}},
             "images": {"L": {"scores": {"up": 2.0, "down": 2.0}}, "R": {"scores": {"up": 1.0, "down": 1.0}}}}
    chose_left = [{**v("1", "r", "x"), "left_image": "L", "right_image": "R"}] * 3
    rows = {m["metric"]: m for m in analysis.metric_agreement(chose_left, index)}
    assert rows["up"]["agreement"] == 1.0 and rows["down"]["agreement"] == 0.0 and rows["up"]["votes"] == 3


# -------------------------------------------------------------------------------------- simulated rater

@pytest.fixture(scope="module")
def testbed_sim(tmp_path_factory) -> tuple[Path, dict]:
    """base, ddpo and rocm-none on the testbed at 2000 NFE; 120 simulated votes (testbed-gold + N(0, σ²))."""
    from bench.human_eval.command import human_eval

    out = make_suite(tmp_path_factory.mktemp("he") / "testbed", "testbed", ["rocm-none", "ddpo"], "2000nfe",
                     TESTBED_SETS)
    result = human_eval(out, simulate_votes=120, noise=SIM_NOISE, draw_cfg=DrawConfig(device="cpu"))
    return out, result


def test_simulated_votes_rank_systems_by_gold(testbed_sim):
    """The Bradley-Terry order of the systems matches their mean gold wherever two means differ by more than σ
    (rocm-none over-optimises the proxy and loses gold); at least one such pair must exist."""
    suite, a = testbed_sim
    assert a["votes"] == 120 and a["raters"] == 2 and a["items"] == 60
    gold = {s: m["testbed-gold"] for s, m in a["metric_means"].items()}
    score = {r["system"]: r for r in a["ranking"]}
    checked = 0
    for s in gold:
        for t in gold:
            if gold[s] - gold[t] > SIM_NOISE:
                checked += 1
                assert score[s]["score"] > score[t]["score"], (s, t, gold, score)
                assert score[s]["low"] > score[t]["score"] or score[t]["high"] < score[s]["score"]
    assert checked >= 1
    metric_rows = {m["metric"]: m for m in a["metric_agreement"]}
    assert metric_rows["testbed-gold"]["agreement"] > 0.6  # the rater is gold plus noise
    assert a["rater_agreement"]["items"] == 60


def test_report_has_a_human_section_when_votes_exist(testbed_sim, tiny_suite, tmp_path):
    from bench.analysis.report import build_report

    suite, _ = testbed_sim
    files = build_report(suite)
    index = (suite / "report" / "index.md").read_text()
    assert "## Human evaluation" in index and "Bradley-Terry" in index and "testbed-gold" in index
    assert suite / "report" / "human_eval.json" in files
    assert analysis.report_section(fresh_copy(tiny_suite, tmp_path), tmp_path / "r") == ([], [])


# -------------------------------------------------------------------------------------------- browser

@pytest.mark.browser
@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_rating_in_a_real_browser(tiny_suite, tmp_path):
    """Headless Chromium: a name, 12 votes with the mouse (one a double click), 10 with the keyboard; every vote
    in the database once; a reload loses and repeats nothing; no method name in the page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from bench.human_eval.app import BackgroundServer, create_app

    suite = fresh_copy(tiny_suite, tmp_path)
    server = BackgroundServer(create_app(suite))
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    votes = lambda: db.read_votes(db.db_path(suite))  # noqa: E731
    try:
        wait = WebDriverWait(driver, 20, poll_frequency=0.05)
        driver.get(server.url + "/")
        driver.find_element(By.ID, "name").send_keys("alice")
        driver.find_element(By.ID, "start").click()

        def rated(n: int) -> None:
            state = lambda d: (d.find_element(By.ID, "progress").text,  # noqa: E731
                               d.find_element(By.TAG_NAME, "body").get_attribute("data-state"),
                               d.find_element(By.ID, "message").text)
            try:  # "ready": the next pair is on screen (a key pressed while it loads is ignored)
                wait.until(lambda d: state(d)[:2] == (f"alice: {n} / 24 rated", "ready"))
            except Exception:
                raise AssertionError(f"waiting for {n} votes, the page shows {state(driver)}") from None

        rated(0)
        expected = []
        clicks = ["btn-left", "btn-right", "btn-tie", "left-img", "right-img", "btn-left"] * 2
        for i, target in enumerate(clicks):
            element = driver.find_element(By.ID, target)
            if i == 3:
                ActionChains(driver).double_click(element).perform()  # must count once
            else:
                element.click()
            expected.append({"btn-left": "left", "left-img": "left", "btn-right": "right", "right-img": "right",
                             "btn-tie": "tie"}[target])
            rated(i + 1)
        keys = [Keys.ARROW_LEFT, Keys.ARROW_RIGHT, Keys.ARROW_DOWN, "a", "l", "t", Keys.ARROW_LEFT, "l", "t", "a"]
        for i, key in enumerate(keys):
            ActionChains(driver).send_keys(key).perform()
            expected.append({Keys.ARROW_LEFT: "left", "a": "left", Keys.ARROW_RIGHT: "right", "l": "right",
                             Keys.ARROW_DOWN: "tie", "t": "tie"}[key])
            rated(len(clicks) + i + 1)
        rows = votes()
        assert [r["choice"] for r in rows] == expected and len({r["item"] for r in rows}) == 22
        assert {r["rater"] for r in rows} == {"alice"}
        shown = driver.find_element(By.ID, "prompt").text
        driver.refresh()  # the name is remembered; the pair on screen is served again, unjudged
        rated(22)
        assert driver.find_element(By.ID, "prompt").text == shown
        assert votes() == rows
        html = driver.page_source.lower()
        assert all(name not in html for name in ("rocm", "ddpo", BASE, *read_index(suite)["systems"]))
        assert all(len(Path(img.get_attribute("src")).name) == 16 for img in driver.find_elements(By.TAG_NAME, "img"))
        driver.save_screenshot(str(tmp_path / "human-eval.png"))
        if os.environ.get("HUMAN_EVAL_SCREENSHOT"):
            shutil.copy(tmp_path / "human-eval.png", os.environ["HUMAN_EVAL_SCREENSHOT"])
    finally:
        driver.quit()
        server.stop()
