"""Hierarchical predictor on a frozen I-JEPA backbone: the library.

Nothing here runs on import; `sweeps/` wires these pieces into Ray Tune, Ray Train
and MLflow.
"""
