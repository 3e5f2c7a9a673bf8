"""Drift: served photos and predictions against the reference each version was exported with.

`rules` writes the references as Prometheus constant series for the drift alerts; `offline`
gives the same verdict on a capture folder (`plantdx drift`), in the report of `report`.
"""
