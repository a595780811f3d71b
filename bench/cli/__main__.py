"""`python -m bench.cli …`: the same as the `bench` script."""

from bench.cli.main import main

main()
