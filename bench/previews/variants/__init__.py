"""Variants of the platform for experiments with bench/previews/run.py (never used elsewhere):
each changes one thing the report's breakdown points at, so its effect is measured rather than
guessed. bench/README.md (`bench/previews`) says how to run them and what they gave."""
