"""From votes to results: win rates, a Bradley-Terry ranking, agreement between raters and with every metric.

Reads SUITE/human_eval/votes.sqlite (read-only) and images.json; never imports torch (it runs inside
`bench report`). Definitions:

- **Win rate** of system a over b: wins / (wins + losses) on the votes of that pair, ties left out (their
  count is shown), with a 95% Wilson score interval.
- **Bradley-Terry**: P(i preferred to j) = σ(s_i - s_j), fitted by maximum likelihood with a tie counted as
  half a win for each side, and a weak Gaussian prior on the scores (precision RIDGE: standard deviation 10
  in log-odds) so that a system that won every vote keeps a finite score. Scores are log-odds relative to the
  base model (or to their mean without one). 95% intervals: percentiles of 1,000 bootstrap refits over
  votes resampled with replacement (seeded).
- **Inter-rater agreement**, over items (prompt, sample, system pair) judged by two raters or more: the share
  of rater pairs that gave the same outcome (a, b or tie), and Fleiss' kappa for a varying number of raters.
- **Metric agreement**: on every vote that is not a tie, whether the image that a per-image metric scores
  better (images.json holds each image's scores) is the one the rater chose; a metric that does not separate
  the two images is left out of that vote. With a 95% Wilson interval: which reward predicts the raters best.
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np

from bench.human_eval import db
from bench.human_eval.draw import BASE, images_path
from bench.results.io import read_json, write_json_atomic

Z95 = 1.959963984540054
RIDGE = 0.01  # precision of the Gaussian prior on Bradley-Terry scores (sd 10 in log-odds)
BOOTSTRAP = 1000


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n ((nan, nan) for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bradley_terry(wins: np.ndarray, ridge: float = RIDGE, iters: int = 100) -> np.ndarray:
    """(S, S) wins[i, j] = times i was preferred to j (ties as 0.5 each way) -> (S,) log-strengths, mean 0.
    Newton's method on the penalised log-likelihood (strictly concave), with step halving."""
    s = np.zeros(len(wins))
    n = wins + wins.T

    def objective(x):
        d = x[:, None] - x[None, :]
        return float((wins * -np.logaddexp(0, -d)).sum() - ridge / 2 * (x @ x))

    value = objective(s)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(s[:, None] - s[None, :])))  # (S, S) P(i beats j)
        grad = (wins - n * p).sum(axis=1) - ridge * s
        w = n * p * (1 - p)
        hess = -(np.diag(w.sum(axis=1)) - w) - ridge * np.eye(len(s))
        step = np.linalg.solve(hess, -grad)
        t = 1.0
        while t > 1e-8:
            new = s + t * step
            new_value = objective(new)
            if new_value >= value - 1e-12:
                break
            t /= 2
        s, done = new, abs(new_value - value) < 1e-10
        value = new_value
        if done:
            break
    return s - s.mean()


def _edges(votes: list[dict], index_of: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every vote as (winner, loser, weight) rows: a tie is two half-wins."""
    rows = []
    for v in votes:
        a, b = index_of[v["left_system"]], index_of[v["right_system"]]
        if v["choice"] == "tie":
            rows += [(a, b, 0.5), (b, a, 0.5)]
        else:
            rows.append((a, b, 1.0) if v["choice"] == "left" else (b, a, 1.0))
    arr = np.array(rows, dtype=float).reshape(-1, 3)
    return arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2]


def ranking(votes: list[dict], systems: list[str], seed: int = 0, bootstrap: int = BOOTSTRAP) -> list[dict]:
    """Bradley-Terry scores with bootstrap 95% intervals, best first."""
    k = len(systems)
    index_of = {s: i for i, s in enumerate(systems)}
    vote_of_edge = np.repeat(np.arange(len(votes)), [2 if v["choice"] == "tie" else 1 for v in votes])
    win, lose, weight = _edges(votes, index_of)

    def fit(counts: np.ndarray) -> np.ndarray:
        wins = np.bincount(win * k + lose, weights=weight * counts[vote_of_edge], minlength=k * k).reshape(k, k)
        s = bradley_terry(wins)
        return s - (s[index_of[BASE]] if BASE in index_of else 0.0)

    point = fit(np.ones(len(votes)))
    rng = np.random.default_rng(seed)
    boot = np.array([fit(rng.multinomial(len(votes), np.full(len(votes), 1 / len(votes))))
                     for _ in range(bootstrap)])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    rows = [{"system": s, "score": float(point[i]), "low": float(lo[i]), "high": float(hi[i]),
             "votes": sum(s in (v["left_system"], v["right_system"]) for v in votes)} for i, s in enumerate(systems)]
    return sorted(rows, key=lambda r: -r["score"])


def pairwise(votes: list[dict]) -> list[dict]:
    """Per system pair (a < b): votes, wins of each side, ties, a's win rate over b without ties and its CI."""
    cells: dict[tuple[str, str], dict] = {}
    for v in votes:
        a, b = sorted((v["left_system"], v["right_system"]))
        c = cells.setdefault((a, b), {"a": a, "b": b, "votes": 0, "wins_a": 0, "wins_b": 0, "ties": 0})
        c["votes"] += 1
        if v["winner"] is None:
            c["ties"] += 1
        else:
            c["wins_a" if v["winner"] == a else "wins_b"] += 1
    for c in cells.values():
        decided = c["wins_a"] + c["wins_b"]
        c["win_rate_a"] = c["wins_a"] / decided if decided else math.nan
        c["low"], c["high"] = wilson(c["wins_a"], decided)
    return [cells[k] for k in sorted(cells)]


def outcome(v: dict) -> str:
    """'a', 'b' or 'tie' for the item's systems in sorted order (independent of the sides shown)."""
    if v["winner"] is None:
        return "tie"
    return "a" if v["winner"] == min(v["left_system"], v["right_system"]) else "b"


def rater_agreement(votes: list[dict]) -> dict | None:
    """Pairwise agreement and Fleiss' kappa over items judged by >= 2 raters (None if there are none)."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for v in votes:
        by_item[v["item"]][v["rater"]] = outcome(v)
    shared = [list(r.values()) for r in by_item.values() if len(r) >= 2]
    if not shared:
        return None
    same = sum(x == y for o in shared for x, y in combinations(o, 2))
    pairs = sum(len(o) * (len(o) - 1) // 2 for o in shared)
    labels = ("a", "b", "tie")
    counts = np.array([[o.count(c) for c in labels] for o in shared], dtype=float)  # (items, 3)
    n = counts.sum(axis=1)
    p_item = ((counts ** 2).sum(axis=1) - n) / (n * (n - 1))
    p_label = counts.sum(axis=0) / n.sum()
    p_e = float((p_label ** 2).sum())
    kappa = (float(p_item.mean()) - p_e) / (1 - p_e) if p_e < 1 else math.nan
    return {"items": len(shared), "raters": len({r for v in by_item.values() if len(v) >= 2 for r in v}),
            "agreement": same / pairs, "fleiss_kappa": kappa}


def metric_agreement(votes: list[dict], index: dict) -> list[dict]:
    """Per metric: the share of non-tie votes whose chosen image the metric also scores better, best first."""
    images = index["images"]
    rows = []
    for metric, info in index.get("metrics", {}).items():
        sign = 1.0 if info.get("higher_is_better", True) else -1.0
        agree = n = 0
        for v in votes:
            if v["choice"] == "tie":
                continue
            left = images.get(v["left_image"], {}).get("scores", {}).get(metric)
            right = images.get(v["right_image"], {}).get("scores", {}).get(metric)
            if left is None or right is None or left == right:
                continue
            n += 1
            agree += ((sign * (left - right) > 0) == (v["choice"] == "left"))
        low, high = wilson(agree, n)
        rows.append({"metric": metric, "votes": n, "agreement": agree / n if n else math.nan, "low": low,
                     "high": high})
    return sorted(rows, key=lambda r: -(r["agreement"] if r["votes"] else -1))


def metric_means(index: dict) -> dict[str, dict[str, float]]:
    """{system: {metric: mean over its drawn images}}."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for image in index["images"].values():
        for m, x in image.get("scores", {}).items():
            sums[image["system"]][m].append(x)
    return {s: {m: float(np.mean(x)) for m, x in ms.items()} for s, ms in sums.items()}


def analyse(suite_dir: Path) -> dict | None:
    """The whole analysis of a suite's votes, or None when there are none."""
    votes = db.read_votes(db.db_path(suite_dir))
    if not votes or not images_path(suite_dir).exists():
        return None
    index = read_json(images_path(suite_dir))
    systems = sorted({s for v in votes for s in (v["left_system"], v["right_system"])} | set(index["systems"]))
    return {"votes": len(votes), "raters": len({v["rater"] for v in votes}),
            "ties": sum(v["choice"] == "tie" for v in votes), "items": len({v["item"] for v in votes}),
            "per_rater": dict(sorted(_count(v["rater"] for v in votes).items())),
            "app_versions": sorted({v["app_version"] for v in votes}), "split": index.get("split"),
            "ranking": ranking(votes, systems), "pairwise": pairwise(votes),
            "rater_agreement": rater_agreement(votes), "metric_agreement": metric_agreement(votes, index),
            "metric_means": metric_means(index)}


def _count(items) -> dict:
    out: dict = defaultdict(int)
    for x in items:
        out[x] += 1
    return out


def _ci(x: float, lo: float, hi: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def section_markdown(a: dict) -> list[str]:
    """The report's human-evaluation section."""
    metrics = sorted({m for ms in a["metric_means"].values() for m in ms})
    ref = "the base model" if any(r["system"] == BASE for r in a["ranking"]) else "the mean system"
    lines = ["## Human evaluation", "",
             f"{a['votes']} votes by {a['raters']} raters on {a['items']} items of the {a['split']} prompts "
             f"({a['ties']} ties / both bad); votes per rater: "
             + ", ".join(f"{r} {n}" for r, n in a["per_rater"].items()) + ". Pairs shown blind, sides random.", "",
             f"**Ranking** (Bradley-Terry score: log-odds of being preferred, relative to {ref}; 95% bootstrap "
             f"interval over votes; ties count half; metric columns: mean over the rated images)", "",
             "| system | BT score [95% CI] | votes | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for r in a["ranking"]:
        means = a["metric_means"].get(r["system"], {})
        lines.append(f"| {r['system']} | {_ci(r['score'], r['low'], r['high'])} | {r['votes']} | "
                     + " | ".join(f"{means[m]:.3g}" if m in means else "" for m in metrics) + " |")
    lines += ["", "**Pairwise win rates** (a over b, ties left out; 95% Wilson interval)", "",
              "| a | b | votes | wins a | wins b | ties | win rate of a [95% CI] |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {c['a']} | {c['b']} | {c['votes']} | {c['wins_a']} | {c['wins_b']} | {c['ties']} | "
              f"{_ci(c['win_rate_a'], c['low'], c['high'])} |" for c in a["pairwise"]]
    agreement = a["rater_agreement"]
    lines += [""]
    if agreement is None:
        lines += ["**Inter-rater agreement**: no item was judged by two raters yet."]
    else:
        lines += [f"**Inter-rater agreement**: on {agreement['items']} items judged by two raters or more "
                  f"({agreement['raters']} raters), {agreement['agreement']:.0%} of rater pairs agree; Fleiss' "
                  f"kappa {agreement['fleiss_kappa']:.2f}."]
    lines += ["", "**Automatic metrics against the raters** (share of non-tie votes where the metric scores the "
              "chosen image better; 95% Wilson interval; 50% is chance)", "", "| metric | votes | agreement [95% CI] |",
              "|---|---|---|"]
    lines += [f"| {m['metric']} | {m['votes']} | {_ci(m['agreement'], m['low'], m['high'])} |"
              for m in a["metric_agreement"]]
    return lines + [""]


def add_section(index_md: str, lines: list[str]) -> str:
    """The report's index.md with `lines` inserted before its closing Notes section (or at its end)."""
    if not lines:
        return index_md
    text = "\n".join(lines) + "\n"
    at = index_md.find("\n## Notes\n")
    return index_md + "\n" + text if at < 0 else index_md[:at + 1] + text + index_md[at:]


def report_section(suite_dir: Path, out_dir: Path) -> tuple[list[str], list[Path]]:
    """(Markdown lines, files written) for `bench report`: nothing when the suite has no votes."""
    a = analyse(Path(suite_dir))
    if a is None:
        return [], []
    path = Path(out_dir) / "human_eval.json"
    write_json_atomic(path, a)
    return section_markdown(a), [path]
