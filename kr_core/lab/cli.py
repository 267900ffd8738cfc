"""``kr lab``: bring a network-namespace cluster up and down, drive it, probe it.

    kr lab up [--nodes N] [--ipv6] [--config FILE] [--plugins a,b,...] [--static-routes] [--name NAME]
    kr lab down [--name NAME]
    kr lab status [--json]
    kr lab kubeconfig
    kr lab kubectl -- ARGS...
    kr lab exec TARGET -- CMD...
    kr lab probe FROM TO PORT [--protocol TCP|UDP|SCTP] [--timeout S] [--json]
    kr lab matrix [--namespaces x,y] [--port P] [--protocol PROTO] [--to pod|service] [--json]
    kr lab vm [--kernel uml|qemu] -- CMD...

Every subcommand takes ``--name NAME`` (default ``kr``, or ``$KR_LAB_NAME``). Exit codes: 0 success
(probe: connected with the right answer), 1 failure (probe: blocked), 2 usage error or no such lab.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys

from kr_core.lab.state import DEFAULT_NAME


def _name_default() -> str:
    return os.environ.get("KR_LAB_NAME", DEFAULT_NAME)


def _say(msg: str) -> None:
    print(msg, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kr lab", description="A Kubernetes cluster of network namespaces.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def named(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--name", default=_name_default(), help="the lab's name (default %(default)s)")
        return sp

    sp = named(sub.add_parser("up", help="create the lab and start its control plane, kubelets and agents"))
    sp.add_argument("--nodes", type=int, default=2, help="number of nodes (default %(default)s)")
    sp.add_argument("--ipv6", action="store_true", help="dual stack (IPv4 + IPv6)")
    sp.add_argument("--config", metavar="FILE", help="kr config file for every node agent")
    sp.add_argument("--plugins", metavar="A,B", help="enable exactly these plugins (default: the config's choice; "
                    "'none' runs no agent plugin)")
    sp.add_argument("--static-routes", action="store_true",
                    help="route pod CIDRs between nodes statically (cross-node pod traffic without a routing plugin)")
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness (default %(default)s)")
    sp.add_argument("-v", "--verbose", action="store_true", help="log every step")

    named(sub.add_parser("down", help="remove the lab (idempotent; also after a crash)"))
    sp = named(sub.add_parser("status", help="nodes, agents (running? healthy?), pods"))
    sp.add_argument("--json", action="store_true")
    named(sub.add_parser("kubeconfig", help="print the path of the lab's kubeconfig"))
    sp = named(sub.add_parser("kubectl", help="kubectl against the lab: kr lab kubectl -- ARGS"))
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sp = named(sub.add_parser("exec", help="run a command in node-N, ext, cp or a pod ns/name"))
    sp.add_argument("target")
    sp.add_argument("args", nargs=argparse.REMAINDER)

    sp = named(sub.add_parser("probe", help="can FROM reach TO:PORT? (exit 0 yes, 1 blocked)"))
    sp.add_argument("src", metavar="FROM", help="ns/pod, ext or node-N")
    sp.add_argument("dst", metavar="TO", help="ns/pod, svc/ns/name or an IP")
    sp.add_argument("port", type=int)
    sp.add_argument("--protocol", default="TCP", type=str.upper, choices=["TCP", "UDP", "SCTP"])
    sp.add_argument("--timeout", type=float, default=2.0, help="seconds to keep trying (default %(default)s)")
    sp.add_argument("--family", type=int, choices=[4, 6], default=4, help="IP family of TO (default 4)")
    sp.add_argument("--json", action="store_true")

    sp = named(sub.add_parser("matrix", help="every pod to every pod (or service): reachable or blocked"))
    sp.add_argument("--namespaces", metavar="X,Y", help="only pods of these namespaces (default: all)")
    sp.add_argument("--port", type=int, default=80)
    sp.add_argument("--protocol", default="TCP", type=str.upper, choices=["TCP", "UDP", "SCTP"])
    sp.add_argument("--to", default="pod", choices=["pod", "service"])
    sp.add_argument("--timeout", type=float, default=1.5, help="retry window per probe (default %(default)s)")
    sp.add_argument("--family", type=int, choices=[4, 6], default=4)
    sp.add_argument("--json", action="store_true")

    sub.add_parser("vm", help="run a command in a VM (kr lab vm --help)", add_help=False)
    return p


def _rest(args: list[str]) -> list[str]:
    return args[1:] if args and args[0] == "--" else args


def main(argv: list[str]) -> int:
    argv = list(argv)
    if argv and argv[0] == "vm":
        from kr_core.lab.cli_vm import main as vm_main

        return int(vm_main(argv[1:]) or 0)
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(ns, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s", stream=sys.stderr)
    from kr_core.lab import lab
    from kr_core.lab.kube import ApiError, Kube
    from kr_core.lab.probe import ProbeError, format_matrix, matrix, probe

    try:
        if ns.cmd == "up":
            plugins = None
            if ns.plugins is not None:
                plugins = [] if ns.plugins.strip() in ("", "none") else [x.strip() for x in ns.plugins.split(",") if x.strip()]
            lab.up(ns.name, ns.nodes, ipv6=ns.ipv6, config=ns.config, plugins=plugins,
                   static_routes=ns.static_routes, say=_say, timeout=ns.timeout)
            return 0
        if ns.cmd == "down":
            if not lab.down(ns.name, say=_say):
                _say(f"lab {ns.name}: nothing to remove")
            return 0
        st = lab.require(ns.name)
        if ns.cmd == "status":
            s = lab.status(ns.name)
            print(json.dumps(s, indent=2) if ns.json else lab.format_status(s))
            return 0
        if ns.cmd == "kubeconfig":
            print(st.kubeconfig)
            return 0
        if ns.cmd == "kubectl":
            kubectl = shutil.which("kubectl")
            if kubectl is None:
                print("kr lab: kubectl is not installed", file=sys.stderr)
                return 2
            cmd = [kubectl, "--kubeconfig", str(st.kubeconfig), *_rest(ns.args)]
            os.execv(kubectl, cmd)
        if ns.cmd == "exec":
            cmd = _rest(ns.args)
            if not cmd:
                print("kr lab exec: give a command after --", file=sys.stderr)
                return 2
            target = lab.target_netns(st, ns.target)
            os.execvp("ip", ["ip", "netns", "exec", target, *cmd])
        kube = Kube.from_kubeconfig(str(st.kubeconfig))
        if ns.cmd == "probe":
            r = probe(st, kube, ns.src, ns.dst, ns.port, ns.protocol, ns.timeout, ns.family)
            if ns.json:
                print(json.dumps(r.to_json(), indent=2))
            else:
                verdict = "connected" if r.connected else "blocked"
                detail = f"answer {r.answer!r}" if r.connected else (r.error or "")
                print(f"{r.src} -> {r.dst} ({r.ip}:{r.port}/{r.protocol}): {verdict}, {detail} "
                      f"[{r.attempts} attempt(s), {r.ms:.0f} ms]")
            return 0 if r.connected else 1
        if ns.cmd == "matrix":
            nss = [x for x in ns.namespaces.split(",") if x] if ns.namespaces else None
            m = matrix(st, kube, nss, ns.port, ns.protocol, ns.to, ns.timeout, ns.family)
            print(json.dumps(m, indent=2) if ns.json else format_matrix(m))
            return 0
    except (lab.LabError, ProbeError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"kr lab: {msg}", file=sys.stderr)
        return 2 if not isinstance(e, lab.LabError) or ns.cmd != "up" else 1
    except (ApiError, OSError) as e:
        print(f"kr lab: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
