"""kr-plugin-hostsfile: an example third-party kr plugin that writes every Service's cluster IPs to a hosts file.

The plugin class is :class:`kr_hostsfile.plugin.HostsFile`, registered as ``hostsfile`` in the ``kr.plugins``
entry-point group.
"""

from kr_hostsfile.plugin import (
    Config,
    HostEntry,
    HostsFile,
    __version__,
    render,
    render_services,
    service_entries,
    write_atomic,
)

__all__ = [
    "Config",
    "HostEntry",
    "HostsFile",
    "__version__",
    "render",
    "render_services",
    "service_entries",
    "write_atomic",
]
