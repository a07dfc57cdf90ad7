"""The benchmark scenarios of `scripts/bench.py`, one module each, and what they share (kit)."""
