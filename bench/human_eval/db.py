"""Pairs and votes in SQLite (SUITE/human_eval/votes.sqlite): votes are data that must never be lost.

- WAL journal with synchronous=FULL and one transaction per vote, committed before the server answers: an
  acknowledged vote survives a kill of the server (or of the machine).
- Pair ids are random tokens stored when a pair is served, with the rater and which image went left; a vote
  names its pair id, so an unknown or altered id is rejected, and the stored pair, not the request, says which
  systems were compared.
- Every vote carries a submission id made by the page once per shown pair: the same submission sent twice (a
  double click, a retry after a lost answer) records one vote and answers as the first did. A pair takes one
  vote; another submission for a judged pair is refused.

Tables: `pairs` (pair_id, rater, item, prompt, sample, left/right system and image, served_at) and `votes`
(id, submission_id, pair_id, rater, item, prompt, sample, left/right system and image, choice
left|right|tie, winner: the preferred system or NULL for a tie, seconds on screen, created UTC ISO time,
app_version). Readers (the report) open the file read-only.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path

from bench.human_eval import APP_VERSION, FOLDER

CHOICES = ("left", "right", "tie")

SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    pair_id TEXT PRIMARY KEY, rater TEXT NOT NULL, item TEXT NOT NULL, prompt INTEGER NOT NULL,
    sample INTEGER NOT NULL, left_system TEXT NOT NULL, right_system TEXT NOT NULL, left_image TEXT NOT NULL,
    right_image TEXT NOT NULL, served_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pairs_rater ON pairs (rater, item);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, submission_id TEXT NOT NULL UNIQUE,
    pair_id TEXT NOT NULL UNIQUE REFERENCES pairs (pair_id), rater TEXT NOT NULL, item TEXT NOT NULL,
    prompt INTEGER NOT NULL, sample INTEGER NOT NULL, left_system TEXT NOT NULL, right_system TEXT NOT NULL,
    left_image TEXT NOT NULL, right_image TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')), winner TEXT, seconds REAL,
    created TEXT NOT NULL, app_version TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS votes_rater ON votes (rater, item);
"""
VOTE_COLUMNS = ("id", "submission_id", "pair_id", "rater", "item", "prompt", "sample", "left_system", "right_system",
                "left_image", "right_image", "choice", "winner", "seconds", "created", "app_version")


class VoteRejected(Exception):
    """A vote the server refuses: `status` is the HTTP status to answer with, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def db_path(suite_dir: Path) -> Path:
    return Path(suite_dir) / FOLDER / "votes.sqlite"


@contextmanager
def transaction(path: Path):
    """A connection inside one immediate (write-locked) transaction, committed on leaving without an error."""
    with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def init(path: Path) -> None:
    """Create the database (WAL mode is a property of the file, set once)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def serve_pair(path: Path, rater: str, item: str, prompt: int, sample: int, systems: tuple[str, str],
               images: tuple[str, str]) -> dict:
    """The pair shown to `rater` for `item`, (left, right) as given: the one already served and not judged
    yet if there is one (a reload shows the same pair, same sides), else a new one with a fresh id."""
    with transaction(path) as conn:
        row = conn.execute("SELECT p.* FROM pairs p LEFT JOIN votes v ON v.pair_id = p.pair_id "
                           "WHERE p.rater = ? AND p.item = ? AND v.id IS NULL ORDER BY p.served_at DESC LIMIT 1",
                           (rater, item)).fetchone()
        if row is not None:
            return dict(row)
        pair = {"pair_id": secrets.token_urlsafe(16), "rater": rater, "item": item, "prompt": prompt,
                "sample": sample, "left_system": systems[0], "right_system": systems[1], "left_image": images[0],
                "right_image": images[1], "served_at": now()}
        conn.execute(f"INSERT INTO pairs ({', '.join(pair)}) VALUES ({', '.join('?' * len(pair))})",
                     tuple(pair.values()))
        return pair


def record_vote(path: Path, pair_id: str, submission_id: str, rater: str, choice: str,
                seconds: float | None = None) -> tuple[dict, bool]:
    """Store one vote in one transaction; returns (the vote, whether it had been recorded before)."""
    if choice not in CHOICES:
        raise VoteRejected(422, f"choice must be one of {', '.join(CHOICES)}, got '{choice}'")
    if not submission_id or len(submission_id) > 100:
        raise VoteRejected(422, "a vote needs a submission id (at most 100 characters)")
    if seconds is not None and not (0 <= seconds < float("inf")):
        raise VoteRejected(422, f"seconds on screen must be a finite number >= 0, got {seconds}")
    with transaction(path) as conn:
        old = conn.execute("SELECT * FROM votes WHERE submission_id = ?", (submission_id,)).fetchone()
        if old is not None:
            if old["pair_id"] != pair_id:
                raise VoteRejected(409, "this submission id was already used for another pair")
            return dict(old), True
        pair = conn.execute("SELECT * FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
        if pair is None:
            raise VoteRejected(404, "unknown pair id: it was not served by this server (altered or from another "
                                    "suite); reload the page for a new pair")
        if pair["rater"] != rater:
            raise VoteRejected(403, "this pair was served to another rater")
        if conn.execute("SELECT 1 FROM votes WHERE pair_id = ?", (pair_id,)).fetchone() is not None:
            raise VoteRejected(409, "this pair has already been judged; reload the page for the next one")
        winner = {"left": pair["left_system"], "right": pair["right_system"], "tie": None}[choice]
        vote = {"submission_id": submission_id, "pair_id": pair_id, "rater": rater, "item": pair["item"],
                "prompt": pair["prompt"], "sample": pair["sample"], "left_system": pair["left_system"],
                "right_system": pair["right_system"], "left_image": pair["left_image"],
                "right_image": pair["right_image"], "choice": choice, "winner": winner,
                "seconds": None if seconds is None else float(seconds), "created": now(), "app_version": APP_VERSION}
        cur = conn.execute(f"INSERT INTO votes ({', '.join(vote)}) VALUES ({', '.join('?' * len(vote))})",
                           tuple(vote.values()))
        return {"id": cur.lastrowid, **vote}, False


def judged_items(path: Path, rater: str) -> set[str]:
    """Items `rater` has voted on."""
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        return {r[0] for r in conn.execute("SELECT item FROM votes WHERE rater = ?", (rater,))}


def read_votes(path: Path) -> list[dict]:
    """Every vote, oldest first, from a read-only connection (also while the server writes)."""
    if not Path(path).exists():
        return []
    with closing(sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "votes" not in tables:
            return []
        return [dict(r) for r in conn.execute(f"SELECT {', '.join(VOTE_COLUMNS)} FROM votes ORDER BY id")]
