"""Results on disk, torch-free: atomic writes and append-only logs (io.py), the typed, versioned schema of every
file a suite folder holds (schema.py), and the locks that keep one writer per run folder (locks.py).
"""
