"""The routing layer: what decides which tier writes a step.

``gates`` (per-step accept/escalate, the learned ``PolicyGate`` among them), ``allocator`` and
``learned_allocator`` (the ex-ante tier of the next step) and ``radar`` (query-level routing). It
imports models, features and artifacts, never the graph above it.
"""
