"""Benchmarks of sandbox_magics against baselines measured in the same run.

``python -m benchmarks`` runs every case and prints a table of ratios; ``--quick`` uses
tiny sizes (the test suite runs that so the benchmarks cannot rot); ``--only NAME`` picks
cases. Nothing here is a pass/fail test: the table says which targets were met.
"""
