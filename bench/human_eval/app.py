"""The rating server (FastAPI on uvicorn): one page and a small JSON API over the suite's images and votes.

    GET  /                      the rating page (bench/human_eval/page.py); no method name appears in it
    GET  /api/next?rater=NAME   the next pair for this rater: {pair_id, prompt, left, right, done, total}, or
                                {finished: true, done, total} when they have judged every item
    POST /api/vote              {pair_id, submission_id, rater, choice: left|right|tie, seconds} ->
                                {recorded, duplicate, done, total}; refusals answer {detail: "..."} with 4xx
    GET  /img/ID                one image (random ids from images.json; nothing else is served)

With an access token every request must carry it (header `X-Token`, or `?token=` in the page's address, which
the page then sends on). The server binds 127.0.0.1 unless told otherwise, and refuses another address
without a token. Endpoints are plain functions run in uvicorn's thread pool; each opens its own SQLite
connection (db.py), so raters at once are serialised by SQLite's write lock, one transaction per vote.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name classes imported
# inside create_app.

import hmac
import ipaddress
import re
import secrets
import socket
import threading
from pathlib import Path

from bench.core.errors import BenchError
from bench.human_eval import db
from bench.human_eval.draw import images_path, read_index
from bench.human_eval.page import PAGE
from bench.human_eval.schedule import balanced_order

RATER_NAME = re.compile(r"^[\w .@-]{1,40}$")
IMAGE_ID = re.compile(r"^[0-9a-f]{16}$")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, token: str | None) -> None:
    """Only a loopback address may go without a token: anyone who can reach the port could vote."""
    if not is_loopback(host) and not token:
        raise BenchError(f"--host {host} lets other machines reach the rating page: give an access token with "
                         f"--token (raters then open http://HOST:PORT/?token=...)")


def create_app(suite_dir: Path, token: str | None = None):
    """The FastAPI application over SUITE/human_eval (images drawn, database created)."""
    from fastapi import Body, Depends, FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse

    index = read_index(suite_dir)
    folder = images_path(suite_dir).parent
    votes_db = db.db_path(suite_dir)
    db.init(votes_db)
    order = balanced_order(list(index["systems"]), len(index["prompts"]), index["samples_per_prompt"],
                           seed=index["seed"])
    if not order:
        raise BenchError(f"{folder}: fewer than two systems to compare")
    image_of = {(v["system"], v["prompt"], v["sample"]): k for k, v in index["images"].items()}

    def authorise(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("x-token") or request.query_params.get("token") or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong access token: open the address you were given, with ?token=")

    def rater_name(name: str) -> str:
        name = name.strip()
        if not RATER_NAME.match(name):
            raise HTTPException(422, "a rater name is 1-40 letters, digits, spaces or . @ - _")
        return name

    app = FastAPI(title="bench human-eval", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authorise)])

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/next")
    def next_pair(rater: str) -> dict:
        rater = rater_name(rater)
        judged = db.judged_items(votes_db, rater)
        progress = {"done": sum(item.key in judged for item in order), "total": len(order)}
        item = next((it for it in order if it.key not in judged), None)
        if item is None:
            return {"finished": True, **progress}
        sides = (item.a, item.b) if secrets.randbelow(2) else (item.b, item.a)
        pair = db.serve_pair(votes_db, rater, item.key, item.prompt, item.sample, sides,
                             tuple(image_of[(s, item.prompt, item.sample)] for s in sides))
        return {"finished": False, "pair_id": pair["pair_id"], "prompt": index["prompts"][item.prompt],
                "left": f"img/{pair['left_image']}", "right": f"img/{pair['right_image']}", **progress}

    @app.post("/api/vote")
    def vote(pair_id: str = Body(...), submission_id: str = Body(...), rater: str = Body(...),
             choice: str = Body(...), seconds: float | None = Body(None)) -> dict:
        rater = rater_name(rater)
        try:
            _, duplicate = db.record_vote(votes_db, pair_id, submission_id, rater, choice, seconds)
        except db.VoteRejected as e:
            raise HTTPException(e.status, str(e)) from None
        done = len(db.judged_items(votes_db, rater) & {item.key for item in order})
        return {"recorded": True, "duplicate": duplicate, "done": done, "total": len(order)}

    @app.get("/img/{image_id}")
    def image(image_id: str):
        if not IMAGE_ID.match(image_id) or image_id not in index["images"]:
            raise HTTPException(404, "unknown image")
        return FileResponse(folder / "images" / f"{image_id}.png", media_type="image/png")

    return app


class BackgroundServer:
    """uvicorn serving `app` from a thread on an already bound socket (port 0: a free one), for the simulated
    rater and the tests. `url` is where it answers; `stop()` shuts it down."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise BenchError(f"the rating server did not start on {self.url}")
            threading.Event().wait(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port), or a BenchError saying why not (port taken, bad address)."""
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        raise BenchError(f"cannot serve on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    return sock


def serve(suite_dir: Path, host: str, port: int, token: str | None) -> None:
    """Serve until interrupted (Ctrl-C)."""
    import uvicorn

    check_host(host, token)
    app = create_app(suite_dir, token)
    sock = bind(host, port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"rating page: http://{shown}:{port}/" + (f"?token={token}" if token else "") +
          f"  (votes in {db.db_path(suite_dir)}; Ctrl-C stops the server, every acknowledged vote is kept)")
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])
