"""`bench serve-reward`: any registered reward behind the reward-server protocol (server.py; the wire format is
bench/core/reward_protocol.py).
"""
