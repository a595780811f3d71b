"""How a method looks in every figure: its family's hue and line style, and a shade of that hue of its own, so
that fourteen and more methods stay apart at a glance (the same method has the same look in every plot).

Families follow the README: first-order through the whole trajectory (ROCM: blues, solid), truncated first-order
(DRaFT-K, AlignProp, ReFL: greens, dashed), policy gradient (DDPO, GRPO, DPOK, REBEL and their variants: oranges,
dash-dot), preference (D3PO: purples, dotted); anything else (plugins) greys, long dashes. Within a family,
methods take evenly spaced shades in the order of the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = {  # module of methods/ -> family
    "rocm": "first-order", "draft": "truncated", "refl": "truncated", "ddpo": "policy-gradient",
    "grpo": "policy-gradient", "dpok": "policy-gradient", "ddpo_kl": "policy-gradient", "rebel": "policy-gradient",
    "d3po": "preference"}
LOOK = {  # family -> (matplotlib colormap, line style, marker)
    "first-order": ("Blues", "-", "o"), "truncated": ("Greens", "--", "s"),
    "policy-gradient": ("Oranges", "-.", "^"), "preference": ("Purples", ":", "D"), "other": ("Greys", (0, (6, 2)), "x")}


@dataclass(frozen=True)
class Look:
    colour: tuple
    linestyle: object
    marker: str
    family: str


def family(method: str) -> str:
    """A registered method's family (FAMILIES by its module), else "other"."""
    from bench.registry.catalog import METHODS

    entry = METHODS.get(method)
    module = entry[0].split(":")[0].rsplit(".", 1)[-1] if entry else ""
    return FAMILIES.get(module, "other")


def looks(methods: list[str]) -> dict[str, Look]:
    """A Look for each method: registry order within its family, shades spaced over 0.45-0.95 of the colormap."""
    import matplotlib

    from bench.registry.catalog import METHODS

    order = {m: i for i, m in enumerate(METHODS)}
    by_family: dict[str, list[str]] = {}
    for m in sorted(dict.fromkeys(methods), key=lambda m: (order.get(m, len(order)), m)):
        by_family.setdefault(family(m), []).append(m)
    out = {}
    for fam, members in by_family.items():
        cmap, ls, marker = LOOK[fam]
        colormap = matplotlib.colormaps[cmap]
        for i, m in enumerate(members):
            shade = 0.95 if len(members) == 1 else 0.45 + 0.5 * i / (len(members) - 1)
            out[m] = Look(colormap(shade), ls, marker, fam)
    return out
