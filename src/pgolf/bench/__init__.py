"""Speed measurement: ``pgolf bench train|eval``, model FLOPs utilisation and the recompilation watch.

Numbers measured here go to ``benchmarks/results/*.json`` together with the commit, the device and
the library versions; nothing in this package asserts a speed.
"""
