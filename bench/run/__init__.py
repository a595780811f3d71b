"""Running a suite: its configuration (config.py, suite_file.py), the runner (runner.py) with its evaluation,
checkpoints and trackers, the executors that hand runs to Ray or SLURM (executors.py, launch.py), and using a
trained run (trained.py).
"""
