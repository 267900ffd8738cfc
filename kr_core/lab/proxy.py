"""The host side's way to the lab API server: a loopback HTTP forwarder.

``kr lab up`` binds ``127.0.0.1:<free port>`` in the root namespace and hands the listening socket to this
process (``--fd``); the process then moves itself into the control-plane netns, so every connection it
accepts on the host's loopback is forwarded to the API server inside the lab, one request per connection
(``Connection: close``), with the lab's bearer token added when the request has none: kubectl does not
send a token over plain http. No interface, route or rule
of the root namespace is touched. The host kubeconfig (``kr lab kubeconfig``) points here.

Run as ``python -m kr_core.lab.proxy --fd N --netns LAB-cp --target 127.0.0.1:6443``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading

from kr_core.lab.netns import NETNS_DIR, setns

log = logging.getLogger("kr.lab.proxy")


def _pipe(src: socket.socket, dst: socket.socket, first: bytes = b"") -> None:
    try:
        if first:
            dst.sendall(first)
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _read_head(s: socket.socket) -> tuple[bytes, bytes] | None:
    """Read up to the end of an HTTP head; returns (head without the blank line, what followed it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > 1 << 20:
            return None
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def rewrite_head(head: bytes, token: str | None, request: bool) -> bytes:
    """One request (or response) per connection: ``Connection: close``; requests get the lab's bearer token
    unless they carry credentials (kubectl sends no token over plain http)."""
    lines = head.split(b"\r\n")
    out = [lines[0]]
    has_auth = False
    for line in lines[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in (b"connection", b"keep-alive"):
            continue
        if name == b"authorization":
            has_auth = True
        out.append(line)
    if request and token and not has_auth:
        out.append(b"Authorization: Bearer " + token.encode())
    out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n"


def _serve(client: socket.socket, target: tuple[str, int], token: str | None) -> None:
    try:
        got = _read_head(client)
        if got is None:
            client.close()
            return
        head, rest = got
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError as e:
            log.warning("cannot reach the API server at %s:%d: %s", *target, e)
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = threading.Thread(target=_pipe, args=(client, upstream, rewrite_head(head, token, True) + rest), daemon=True)
        t.start()
        resp = _read_head(upstream)
        if resp is not None:
            _pipe(upstream, client, rewrite_head(resp[0], None, False) + resp[1])
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        t.join(timeout=5)
        upstream.close()
    except OSError:
        pass
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kr-lab-proxy")
    p.add_argument("--fd", type=int, required=True, help="an inherited listening socket")
    p.add_argument("--netns", required=True, help="the netns to connect from")
    p.add_argument("--target", required=True, help="HOST:PORT inside that netns")
    p.add_argument("--state-dir", help="the lab's state directory (names this process for `kr lab down`)")
    p.add_argument("--token-file", help="bearer token added to requests that carry none")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
                        stream=sys.stderr)
    listener = socket.socket(fileno=args.fd)
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip() or None
    fd = os.open(os.path.join(NETNS_DIR, args.netns), os.O_RDONLY)
    setns(fd)  # before any thread exists: every thread of this process now lives in the lab
    os.close(fd)
    host, _, port = args.target.rpartition(":")
    target = (host.strip("[]"), int(port))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    log.info("forwarding %s (host loopback) to %s in netns %s", listener.getsockname(), args.target, args.netns)
    while True:
        try:
            client, _ = listener.accept()
        except OSError as e:
            log.error("accept failed: %s", e)
            return 1
        threading.Thread(target=_serve, args=(client, target, token), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
