"""Thin HTTP routes: each one parses, makes one service or store call, and shapes the answer."""
