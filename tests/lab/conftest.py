"""tests/lab: the lab and its VM runner. (The ``vm`` marker plugin, kr_core.lab.vmtest, is registered for the
whole suite in tests/conftest.py.)"""
