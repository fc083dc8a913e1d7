"""Offline learning of the routing policy: collect traces, train by CPO, calibrate, evaluate, export."""
