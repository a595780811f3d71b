"""Approximate recomputation of results/v2-reference's intervals (gold, test split, at 15000 NFE and at the end)
under protocol 3's scheme, from what the v2 folders kept: each run's mean and its within-run standard error
(per-image scores were not stored then). v2: t(S-1) * sd_seeds / sqrt(S). v3 (approx.): the seeds' variance of the
mean, sd_seeds^2 / S, plus the prompts-and-images variance, which all runs share (same prompts, same evaluation
noise) and so does not shrink with S: the runs' mean stderr^2; Satterthwaite degrees of freedom. MDD at S seeds
for a paired difference of two methods: (t(1 - a/(2m)) + t(0.8)) * sqrt(2 V_S) with m = 91 pairs (14 rows),
treating the two methods' noise as independent (an upper bound: pairing cancels what they share)."""
import json, math, statistics, sys
from pathlib import Path
from scipy import stats

root = Path(sys.argv[1])
by = {}
for d in sorted((root / "runs").iterdir()):
    rows = [json.loads(l) for l in (d / "eval.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r["metric"] == "testbed-gold" and r["split"] == "test"]
    if not rows:
        continue
    method = d.name.split("__")[0]
    for label, pick in (("15000nfe", lambda r: abs(r["nfe"] - 15000) < 0.05 * 15000), ("end", None)):
        cand = [r for r in rows if pick(r)] if pick else [max(rows, key=lambda r: r["fraction"])]
        if cand:
            r = min(cand, key=lambda r: abs(r["nfe"] - 15000)) if pick else cand[0]
            by.setdefault((method, label), []).append((r["value"], r["stderr"], r["n_prompts"]))
print("| method | point | S | v2 half-width | v3 approx. half-width | ratio | df |")
print("|---|---|---|---|---|---|---|")
ratios, within, seedvar = [], [], []
for (m, label), xs in sorted(by.items()):
    S = len(xs)
    if S < 2:
        continue
    vals = [v for v, _, _ in xs]
    sd = statistics.stdev(vals)
    old = stats.t.ppf(0.975, S - 1) * sd / math.sqrt(S)
    w = statistics.mean(se ** 2 for _, se, _ in xs)
    P = xs[0][2]
    V = sd ** 2 / S + w
    df = V ** 2 / ((sd ** 2 / S) ** 2 / (S - 1) + w ** 2 / (P - 1))
    new = stats.t.ppf(0.975, df) * math.sqrt(V)
    ratios.append(new / old)
    if label == "end":
        within.append(w); seedvar.append(sd ** 2)
    print(f"| {m} | {label} | {S} | {old:.4f} | {new:.4f} | {new / old:.2f} | {df:.1f} |")
print(f"\nratio v3/v2: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
m, w, s2 = 91, statistics.median(within), statistics.median(seedvar)
for S in (3, 5):
    V = s2 / S + w
    df = V ** 2 / ((s2 / S) ** 2 / (S - 1) + w ** 2 / (P - 1))
    mdd = (stats.t.ppf(1 - 0.05 / (2 * m), df) + stats.t.ppf(0.8, df)) * math.sqrt(2 * V)
    print(f"MDD (gold, test split, {m} pairs, Holm's first step) at {S} seeds: {mdd:.4f} (df {df:.1f})")
