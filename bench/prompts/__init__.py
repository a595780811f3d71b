"""Prompt sets, each in three disjoint splits (train, validation, test): the built-in ones (sets.py), our own
animal-activities set, the testbed world's grammar (testbed.py) and public benchmarks from the hub cache (hub.py).
Torch-free.
"""
