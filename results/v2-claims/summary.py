"""One row per method for results/README.md: the reference runs at 15k and 45k NFE, C1, the C6 peak and the
ceiling, from bench.claims' functions (the same numbers as claims.md, side by side).

python results/v2-claims/summary.py results/v2-reference results/v2-ceiling results/v2-ceiling-rescaled

Ceiling: each method's proxy-tuned configuration trained on the gold (v2-ceiling), for regularised ROCM with β in
the gold's units instead (v2-ceiling-rescaled, marked †; docs/protocol.md, section 4).
"""
import math
import sys
from pathlib import Path

from bench.claims import at_compute, base_value, c1_table, frontier_peaks, load_suites

GOLD, PROXY, SPLIT = "testbed-gold", "testbed-pref", "test"
reference, ceiling, rescaled = (load_suites([Path(p)])[0] for p in sys.argv[1:4])
x = "nfe"
c1_gold = c1_table(reference, GOLD, SPLIT, 0.01, x).set_index("method")
c1_proxy = c1_table(reference, PROXY, SPLIT, 0.5, x).set_index("method")
metrics = [GOLD, PROXY, "kl-to-base", "testbed-fid"]
at15, at45 = (at_compute(reference, metrics, SPLIT, x, t).set_index("method") for t in (15000, 45000))
peaks = frontier_peaks(reference, GOLD, SPLIT, x).set_index("method")
ceil15 = at_compute(ceiling, [GOLD, "kl-to-base"], SPLIT, x, 15000).set_index("method")
resc15 = at_compute(rescaled, [GOLD, "kl-to-base"], SPLIT, x, 15000).set_index("method")


def pm(t, m, metric):
    v, c = t.loc[m, metric], t.loc[m, f"{metric} ci"]
    return "–" if not math.isfinite(v) else f"{v:.3f}" + ("" if not math.isfinite(c) else f" ± {c:.3f}")


def nfe(t, m):
    v = t.loc[m, "mean"]
    return ("–" if not math.isfinite(v) else f"{v / 1000:.1f}k") + f" ({t.loc[m, 'reached']}/{t.loc[m, 'runs']})"


print(f"base model, test prompts: gold {base_value(reference, GOLD, SPLIT):.4f}, "
      f"proxy {base_value(reference, PROXY, SPLIT):.2f}\n")
print("| method | gold @15k | gold @45k | proxy @45k | kl @45k | FID @45k | NFE to gold +1% | NFE to proxy +50% "
      "| peak gold gain (√KL, NFE) | ceiling gold @15k (kl) | share of ceiling gain @15k |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
base = base_value(reference, GOLD, SPLIT)
for m in at45.index:
    c, mark = (resc15, "†") if m in resc15.index else (ceil15, "")
    print(f"| {m} | {pm(at15, m, GOLD)} | {pm(at45, m, GOLD)} | {at45.loc[m, PROXY]:.1f} | "
          f"{at45.loc[m, 'kl-to-base']:.2f} | {at45.loc[m, 'testbed-fid']:.2f} | {nfe(c1_gold, m)} | "
          f"{nfe(c1_proxy, m)} | {peaks.loc[m, 'peak_gain']:+.4f} ({peaks.loc[m, 'peak_sqrt_kl']:.2f}, "
          f"{peaks.loc[m, 'peak_x'] / 1000:.1f}k) | {c.loc[m, GOLD]:.3f}{mark} ({c.loc[m, 'kl-to-base']:.2f}) | "
          f"{(at15.loc[m, GOLD] - base) / (c.loc[m, GOLD] - base):.2f} |")
