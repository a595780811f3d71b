"""`python -m bench …` and `accelerate launch -m bench run …` (data parallel, see bench/distributed.py)."""

from bench.cli import main

main()
