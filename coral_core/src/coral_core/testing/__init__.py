"""Test kit shipped with coral_core: the store contract and hypothesis strategies.

Needs ``hypothesis`` and ``pytest`` (``pip install coral-core[testing]``); the
engine itself never imports this package.
"""
