"""From result files to conclusions, torch-free: the hacking judge (judge.py), the report's tables, plots and grids
(report.py, table.py, plots.py) and the paper's claims (claims.py).
"""
