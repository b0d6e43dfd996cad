"""Compliance checks: the flip test (causality and score-before-update), normalization, record folders."""
