"""kr plugin netpol_iptables: NetworkPolicy with iptables + ipset"""
