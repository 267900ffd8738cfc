"""kr plugin ipvs_proxy: kube-router's IPVS service proxy"""
