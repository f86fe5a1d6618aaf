"""Great Expectations suites for every table the pipeline reads, and the function that runs them.

Great Expectations is imported lazily (it costs ~3 s): import ``data_contracts.validate`` only when validating.
"""
