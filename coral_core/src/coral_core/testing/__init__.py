"""Test kit shipped with coral_core: the store contract and hypothesis strategies.

* :mod:`coral_core.testing.store_tests`: :class:`StoreTests`, the checks every
  :class:`~coral_core.store.WeightStore` backend must pass (subclass it).
* :mod:`coral_core.testing.strategies`: hypothesis strategies for arrays of
  every dtype Coral stores, with arbitrary bits and the nasty float patterns.

Needs ``hypothesis`` and ``pytest`` (``pip install coral-core[testing]``); the
engine itself never imports this package.
"""
