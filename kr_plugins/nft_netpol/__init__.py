"""kr plugin nft_netpol: NetworkPolicy on native nftables"""
