"""The `bench` command line (typer), one module per group of commands; main.py is the entry point.
"""
