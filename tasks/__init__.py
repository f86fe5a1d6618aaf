"""Pipeline stages: plain functions that do the work, with thin Prefect task wrappers where a flow uses them."""
