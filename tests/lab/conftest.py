"""tests/lab: the lab VM runner. The ``vm`` marker plugin is enabled here (hooks run once per session)."""

from kr_core.lab.vmtest import pytest_collection_modifyitems, pytest_configure  # noqa: F401
