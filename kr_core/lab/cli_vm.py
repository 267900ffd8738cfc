"""``kr lab vm [--kernel uml|qemu] [--timeout S] [--mem M] [--out DIR] [--rw DIR]... -- CMD...``

Runs CMD as root inside a VM with a Debian kernel and this machine's files (see
:mod:`kr_core.lab.vm`), streams its output and exits with its exit code (124: timed out,
125: the VM gave no exit code, 2: usage error or VM unavailable).

``-- CMD ARG...`` runs the program directly; a single word is run with ``bash -c``, so
``kr lab vm -- 'modprobe ip_vs && cat /proc/net/ip_vs'`` works. Also runnable as
``python -m kr_core.lab.cli_vm -- CMD...``.
"""

from __future__ import annotations

import argparse
import sys

from kr_core.lab.vm import KERNELS, VmUnavailable, run_in_vm


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kr lab vm``."""
    p = argparse.ArgumentParser(
        prog="kr lab vm",
        description="Run CMD in a VM with a Debian kernel (IPVS, ipip, dummy, SCTP) and this machine's files.",
        epilog="UML boots in ~3 s but has only legacy iptables; qemu (TCG) has nftables but boots in ~16 s.",
    )
    p.add_argument("--kernel", choices=KERNELS, default="uml", help="uml (default) or qemu")
    p.add_argument("--timeout", type=float, default=900, metavar="S", help="seconds, boot included (default 900)")
    p.add_argument("--mem", default="2G", metavar="M", help="guest memory (default 2G)")
    p.add_argument("--cwd", default=None, help="working directory in the guest (default: the current one)")
    p.add_argument("--out", default=None, metavar="DIR", help="host directory the guest can write ($KR_VM_OUT)")
    p.add_argument("--rw", action="append", default=[], metavar="DIR", help="more host directories the guest can write")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    return p


def main(argv: list[str]) -> int:
    """Entry point; ``argv`` are the arguments after ``kr lab vm``. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.print_usage(sys.stderr)
        print("kr lab vm: missing command after --", file=sys.stderr)
        return 2
    command: list[str] | str = cmd[0] if len(cmd) == 1 else cmd
    try:
        return run_in_vm(
            command,
            kernel=args.kernel,
            cwd=args.cwd,
            timeout=args.timeout,
            mem=args.mem,
            out_dir=args.out,
            rw_dirs=args.rw,
        )
    except VmUnavailable as exc:
        print(f"kr lab vm: {args.kernel} unavailable: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"kr lab vm: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
