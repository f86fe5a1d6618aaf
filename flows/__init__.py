"""Prefect flows (``train-eval``, ``study``): they compose the stages in ``tasks/`` and hold no logic of their own."""
