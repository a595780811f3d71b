"""Name -> implementation: the plain-dict registries (catalog.py), plugins by import path or entry point
(plugins.py), and the lookups with did-you-mean errors (lookup.py).
"""
