"""Artifacts: the non-pickle container, compression and the 16,000,000-byte size accounting."""
