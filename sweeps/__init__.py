"""Ray Tune / Ray Train / MLflow wiring of the sweeps; `sweeps/run.py` is the entry point."""
