"""`python -m bench …` and `accelerate launch -m bench run …` (data parallel, see bench/core/distributed.py)."""

from bench.cli.main import main

main()
