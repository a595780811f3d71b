"""`bench perf`: what a training step costs beyond the model compute it contains (timing.py), its peak memory
(memory.py), and the command that tabulates both (command.py).
"""
