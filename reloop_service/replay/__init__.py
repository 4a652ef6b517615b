"""Replay benchmarks: historical or simulated logs pushed through the real loop, test-then-train."""
