"""Fitting from traces: CPO for policies (2 and K tiers), the allocator and the RADAR 2PL fit."""
