"""Test support for gpukb: a float64 reference of the spec and hypothesis strategies.

``gpukb.testing.reference`` needs only NumPy and optree; ``gpukb.testing.strategies`` needs
hypothesis (the ``test`` extra), which gpukb itself never imports.
"""
