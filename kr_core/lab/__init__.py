"""Lab helpers: run code inside throw-away VMs and test topologies (see :mod:`kr_core.lab.vm`)."""
