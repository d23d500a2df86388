"""Unit tests of the SDK's pure parts: no core, no processes, no network.

``tests/sdk/conftest.py`` (real core and instance processes) is inherited but none of its
fixtures is used here, so these tests stay fast.
"""
