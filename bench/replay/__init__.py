"""The replay benchmark's parts (see bench/bench_replay.py)."""
