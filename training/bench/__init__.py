"""Benchmarks: the gate bench (2 and K tiers), allocator and RADAR benches, paired comparisons."""
