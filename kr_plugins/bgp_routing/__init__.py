"""kr plugin bgp_routing: pod networking by BGP with GoBGP"""
