"""Runtime benchmarks: routing ``overhead`` per step and graph ``throughput`` per backend (``stepgraph overhead|throughput``)."""
