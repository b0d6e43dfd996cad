"""Submitting: significance tests, multi-seed runs and the records/ folder of a submission."""
