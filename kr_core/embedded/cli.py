"""``kr apiserver``: run the embedded API server in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import threading


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kr apiserver", description="Run the embedded Kubernetes API server.")
    p.add_argument("--listen", default="127.0.0.1:6443", help="HOST:PORT to listen on (default 127.0.0.1:6443)")
    p.add_argument("--data", default=None, help="SQLite file to store objects in (default: memory only)")
    p.add_argument("--token-file", default=None, help="file holding the bearer token clients must send "
                   "(required when listening on a non-loopback address)")
    p.add_argument("--write-kubeconfig", default=None, metavar="PATH", help="write a kubeconfig for this server")
    p.add_argument("--history", type=int, default=10000, help="number of events kept for watch resumption")
    p.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between watch BOOKMARK events")
    p.add_argument("--service-cluster-ip-range", default="10.96.0.0/12",
                   help="CIDR(s) for Service ClusterIPs, comma-separated (one per IP family)")
    p.add_argument("--cluster-cidr", default="10.244.0.0/16",
                   help="CIDR(s) for node pod CIDRs, comma-separated (one per IP family)")
    p.add_argument("--node-cidr-mask-size", type=int, default=24, help="IPv4 pod CIDR size per node")
    p.add_argument("--node-cidr-mask-size-ipv6", type=int, default=64, help="IPv6 pod CIDR size per node")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return p


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    from kr_core.embedded.server import ApiServer

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = split_listen(args.listen)
        token = None
        if args.token_file:
            with open(args.token_file) as f:
                token = f.read().strip() or None
        srv = ApiServer(data_path=args.data, host=host, port=port, history=args.history,
                        bookmark_interval=args.bookmark_interval, token=token,
                        service_cluster_ip_range=args.service_cluster_ip_range, cluster_cidr=args.cluster_cidr,
                        node_cidr_mask_size=args.node_cidr_mask_size,
                        node_cidr_mask_size_v6=args.node_cidr_mask_size_ipv6)
    except (ValueError, OSError) as e:
        print(f"kr apiserver: {e}")
        return 2
    try:
        srv.start()
    except OSError as e:
        print(f"kr apiserver: cannot listen on {args.listen}: {e}")
        return 1
    if args.write_kubeconfig:
        srv.write_kubeconfig(args.write_kubeconfig)
    logging.getLogger("kr.apiserver").info("serving on %s", srv.url)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    srv.stop()
    return 0
