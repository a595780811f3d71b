"""Locks on results folders: one writer per run folder, and read-modify-write of shared files (the manifest)
under an exclusive lock. fcntl locks are released by the kernel when their process dies, so a killed run never
leaves a stale lock.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.core.errors import BenchError


# ---- one run, in whichever process runs it ---------------------------------------------------------------------
@contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An fcntl lock on `path` (created if needed), released when the block ends or the process dies; yields
    False, without the lock, if `blocking` is off and another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def run_lock(out: Path, run_id: str) -> Iterator[None]:
    """One writer per run folder: refuse a run another live process is writing."""
    with file_lock(out / ".locks" / f"{run_id}.lock", blocking=False) as held:
        if not held:
            raise BenchError(f"run {run_id} in {out} is being written by another process (one writer per run "
                             f"folder); run this again when it has finished")
        yield
