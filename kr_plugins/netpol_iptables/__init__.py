"""kr plugin netpol_iptables: NetworkPolicy with iptables + ipset (kube-router's semantics and layout).

Modules: :mod:`.plugin` (hooks), :mod:`.render` (pure: desired state -> chains and sets), :mod:`.dataplane`
(the kernel step: diff, one ipset restore, one iptables-restore --noflush per family). The policy model,
names and the reachability oracle are shared with other backends: :mod:`kr_core.net.netpol`.
"""
