"""Collecting traces: run gates over items, verify steps, recompute and score observations."""
