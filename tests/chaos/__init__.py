"""The chaos suite: worker processes serving mixed runs while faults are injected.

See ``tests/chaos/test_chaos.py`` for what is checked, and ``docs/operations.md``
(the "Chaos suite" section) for how to run it longer.
"""
