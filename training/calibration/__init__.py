"""Choosing kappa and thresholds: the calibration guarantee, live kappa and tuned baselines."""
