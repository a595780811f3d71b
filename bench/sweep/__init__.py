"""`bench sweep`: the tuning protocol (protocol.py), one study per method and reward (study.py), the driver
(driver.py), what a sweep writes (outputs.py) and `bench run --from-sweep` (from_sweep.py).
"""
