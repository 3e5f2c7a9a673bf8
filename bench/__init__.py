"""Measurement: the load generator, the in-process limit, the preprocessing benchmark, the
serving sweep and profile, the training-loader benchmark, benchmark fixtures and reports.

Every benchmark runs from `plantdx bench ...`; the modules import their heavy dependencies
(torch, tritonclient, matplotlib) only when they run.
"""
