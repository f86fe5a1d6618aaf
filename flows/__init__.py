"""Prefect only: the flows (``train_eval``, ``study``, ``scheduled_retrain``) that compose the application's steps
as tasks (``steps.py``: caching, retries, names) and the run's Prefect artifacts (``artifacts.py``). No logic of
their own: the work is in ``hbir/app``."""
