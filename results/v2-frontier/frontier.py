"""Testbed-v2 frontier: gold gain against kl-to-base for proxy-trained and gold-trained ROCM, mean over seeds.

python results/v2-frontier/frontier.py results/v2-frontier [test]   -> a table on stdout and frontier.png

Reads every suite folder under the root (proxy-* trained on testbed-pref, gold-* on testbed-gold), averages each
evaluation point over seeds, builds the upper concave envelope of the gold-trained points (through the base
model at kl 0, linearly interpolated) and, for each proxy-trained β, compares its peak gold gain with that
envelope at the same kl-to-base.
"""
import json, glob, os, sys
import numpy as np
root = sys.argv[1]; split = sys.argv[2] if len(sys.argv) > 2 else "test"
curves = {}
for folder in sorted(glob.glob(f"{root}/*/")):
    name = os.path.basename(folder.rstrip("/"))
    per = {}
    for ev in glob.glob(f"{folder}/runs/*/eval.jsonl"):
        for l in open(ev):
            r = json.loads(l)
            if r["split"] != split: continue
            per.setdefault(r["fraction"], {}).setdefault(r["metric"], []).append(r["value"])
    if not per: continue
    pts = []
    for fr in sorted(per):
        m = per[fr]
        pts.append((fr, np.mean(m["kl-to-base"]), np.mean(m["testbed-gold"]), np.std(m["testbed-gold"], ddof=1) if len(m["testbed-gold"]) > 1 else 0,
                    np.mean(m["testbed-pref"]), np.mean(m["testbed-fid"]), len(m["testbed-gold"])))
    curves[name] = pts
base = np.mean([c[0][2] for c in curves.values()])
print(f"base gold ({split}): {base:.4f}")
for name, pts in curves.items():
    print(name)
    for fr, kl, g, gs, p, fid, n in pts:
        print(f"  frac {fr:.2f} kl {kl:7.3f} gold {g:.4f} ({g - base:+.4f}, sd {gs:.4f}, n={n}) pref {p:6.2f} fid {fid:5.2f}")
gold_pts = sorted([(kl, g - base) for n, pts in curves.items() if n.startswith("gold") for _, kl, g, *_ in pts])
# Upper concave envelope of the gold-trained points (through (0, 0)), linearly interpolated.
hull = [(0.0, 0.0)]
for p in sorted(gold_pts + [(0.0, 0.0)]):
    while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0]) <= (p[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0]):
        hull.pop()
    hull.append(p)
def frontier(k):
    xs, ys = zip(*hull)
    return float(np.interp(k, xs, ys))
print("gold-trained envelope:", [(round(x, 3), round(y, 4)) for x, y in hull])
for name, pts in curves.items():
    if not name.startswith("proxy"): continue
    fr, kl, g, gs, p, fid, n = max(pts, key=lambda t: t[2])
    last = pts[-1]
    print(f"{name}: peak gold gain {g - base:+.4f} at kl {kl:.3f} (frac {fr}); gold-trained at that kl {frontier(kl):+.4f}"
          f" -> ratio {(g - base) / frontier(kl) if frontier(kl) > 0 else float('nan'):.2f}; end: kl {last[1]:.2f} gold {last[2] - base:+.4f}")

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6.4, 4.2))
for name, pts in curves.items():
    kl = [np.sqrt(max(p[1], 0)) for p in pts]
    ax.plot(kl, [p[2] - base for p in pts], "o-" if name.startswith("proxy") else "s--", label=name, ms=4)
ax.axhline(0, color="grey", lw=0.8)
ax.set_xlabel("sqrt(kl-to-base)")
ax.set_ylabel(f"testbed-gold gain over the base model ({split} prompts)")
ax.set_title("testbed v2: ROCM-KL trained on the proxy (o) or on the gold (s)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(root, "frontier.png"), dpi=120)
