"""The base models: tiny random ones for tests (tiny.py), real LCMs from the Hugging Face cache (hub.py) and Stable
Diffusion 1.5 at full size with random weights (sd15.py). The built-in testbed is its own package
(bench/testbed/). Registered by name in bench/registry/catalog.py.
"""
