"""Results on disk: atomic writes, append-only logs, and readers that tell a corrupt file from a crash.

Imports no torch: the report reads results through this module and bench.results.schema only.

What is written where, field by field, is bench/results/schema.py (typed, versioned) and docs/results-format.md.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.core.errors import BenchError
from bench.core.objective import folder_name


def run_id(method: str, reward: str, seed: int) -> str:
    """The run's folder name. The reward is spelled as one path component (bench.core.objective.folder_name): a
    reward-server URL (http://127.0.0.1:8000/NAME) becomes http-127.0.0.1-8000-NAME, a reward expression
    `z(pickscore)+0.5*hpsv2` becomes `z.pickscore+0.5xhpsv2`."""
    return f"{method}__{folder_name(reward)}__seed{seed}"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse every row."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Readers never see half a file (see write_bytes_atomic)."""
    write_bytes_atomic(path, (json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n").encode())


def write_bytes_atomic(path: Path, data: bytes, midway: Callable[[], None] | None = None) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`. `midway` (tests' fault
    hooks) is called when half of the data is written: a crash there must leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if midway is not None:
                f.write(data[: len(data) // 2])
                f.flush()
                midway()
                data = data[len(data) // 2:]
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append whole lines and fsync; a crash can at worst leave one truncated last line (see read_jsonl)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(_clean(r), sort_keys=True) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"missing results file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchError(f"corrupt results file {path}: {e.msg if hasattr(e, 'msg') else e}") from None


def read_jsonl(path: Path) -> list[dict]:
    """Read an append-only log. A truncated *last* line is what a crash mid-append leaves: it is dropped.
    A bad line anywhere else means the file was damaged, and that is an error, not something to guess around."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            rows.append(row)
        except ValueError:
            if i == len(lines) - 1:
                continue  # torn final append from a crash
            raise BenchError(f"corrupt results file {path}: line {i + 1} is not a JSON object") from None
    return rows


def writable_folder(path: Path, what: str = "--out", create: bool = True) -> Path:
    """`path` as a folder this process can write into, created if missing (with create=False only checked: its
    nearest existing folder must be writable, so that a later check can still fail with nothing written); a file in
    the way, a parent that cannot be created or a folder without write permission is a one-line BenchError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BenchError(f"{what} {path} is a file, not a folder")
    if not create and not path.exists():
        base = next(p for p in path.absolute().parents if p.exists())
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            raise BenchError(f"cannot create {what} {path}: {base} is not a writable folder")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create {what} {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BenchError(f"{what} {path} is not writable")
    return path
