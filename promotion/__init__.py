"""Champion against challenger: compare two model versions on the same labelled photos, and
promote the challenger only when a stated gate passes.

`compare` evaluates both versions on the same photos, through a running server (two repository
versions loaded side by side, addressed by version) or from checkpoints and MLflow registry
URIs: per-source accuracy, coverage and selective accuracy, per-class deltas, an exact McNemar
test on the paired answers, latency. `promote` runs that comparison on the server, applies the
gate, and only then moves traffic, the repository's version policy and the MLflow alias, and
records the decision with its evidence.
"""
