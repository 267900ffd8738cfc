"""BFD failure detection benchmark (bgp_routing plugin with kr's BFD speaker, gobgpd and BIRD 2 in namespaces).

The link between a node and BIRD starts dropping every packet silently (iptables DROP in BIRD's namespace:
no link down, no TCP reset). Measured: from the drop to kr's BFD session Down, and to the route learned from
BIRD leaving the node's kernel; then from removing the drop to the route being back. With BFD at 100 ms x 3
and 300 ms x 3 (hold time 90 s), and without BFD (hold time 9 s, the lab's usual) as the baseline the hold
timer gives. Goal: the route leaves the kernel within 2x the BFD detection time.

Run: ``python -m tests.bench bfd`` (root; gobgpd, bird2, iproute2, iptables). ``--n`` sets the rounds per
configuration (default 3).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from typing import Any

from tests.plugins.bgp_routing.conftest import need_bgp_tools
from tests.plugins.bgp_routing.netlab import EXT_IP, LabNode, NetLab, sh, wait_for

ANNOUNCED = "198.51.100.0/24"


def _routed(node: LabNode) -> bool:
    out = subprocess.run(["ip", "-n", node.ns, "route", "show", ANNOUNCED, "proto", "17"], capture_output=True,
                         text=True).stdout
    return bool(out.strip())


def _bfd_state(node: LabNode) -> str:
    bfdd = node.plugin().bfdd
    snap = bfdd.snapshot() if bfdd else []
    return snap[0]["state"] if snap else ""


def _drop(lab: NetLab, node: LabNode, on: bool) -> None:
    for chain, side in (("INPUT", "-s"), ("OUTPUT", "-d")):
        sh(lab.ext, "iptables", "-I" if on else "-D", chain, side, node.ip, "-j", "DROP")


def _config(name: str, interval_ms: int | None, mult: int, hold: int, rounds: int) -> dict[str, Any]:
    lab = NetLab(1)
    try:
        n1 = lab.nodes[0]
        bgp = f"hold time {hold}; error wait time 1, 2; connect delay time 1;"
        extra = ""
        if interval_ms is not None:
            bgp += " bfd on;"
            extra = (f'protocol bfd {{ interface "*" {{ min rx interval {interval_ms} ms; '
                     f"min tx interval {interval_ms} ms; multiplier {mult}; }}; }}\n")
            n1.annotations = {"kube-router.io/peers": (
                f"- remoteip: {EXT_IP}\n  remoteasn: 64600\n  bfd: {{enabled: true, detection_multiplier: {mult}, "
                f"desired_min_tx_interval: {interval_ms}, required_min_rx_interval: {interval_ms}}}\n")}
        else:
            n1.annotations = {"kube-router.io/peers": f"- remoteip: {EXT_IP}\n  remoteasn: 64600\n"}
        lab.start_bird([n1], exports=[ANNOUNCED], extra=extra, template_extra=bgp)
        lab.start_agent(n1, **{"bgp-holdtime": float(hold)})
        lab.wait_established(n1, [EXT_IP])
        wait_for(lambda: _routed(n1), 30, "BIRD's route in the kernel")
        if interval_ms is not None:
            wait_for(lambda: _bfd_state(n1) == "UP", 30, "BFD Up")
        down: list[float] = []
        gone: list[float] = []
        back: list[float] = []
        for _ in range(rounds):
            time.sleep(1.0)  # steady state (intervals negotiated, a Poll Sequence over)
            _drop(lab, n1, True)
            t0 = time.monotonic()
            t_down = None
            while _routed(n1):
                if t_down is None and interval_ms is not None and _bfd_state(n1) == "DOWN":
                    t_down = time.monotonic() - t0
                if time.monotonic() - t0 > hold * 2:
                    raise AssertionError("the route never left the kernel")
                time.sleep(0.005)
            gone.append(time.monotonic() - t0)
            if interval_ms is not None:
                if t_down is None:
                    t_down = gone[-1] if _bfd_state(n1) == "DOWN" else float("nan")
                down.append(t_down)
            _drop(lab, n1, False)
            t0 = time.monotonic()
            wait_for(lambda: _routed(n1), 60, "route back", interval=0.01)
            back.append(time.monotonic() - t0)
        detection = interval_ms * mult / 1000 if interval_ms is not None else float(hold)
        return {"config": name, "detection s": detection, "hold s": hold, "rounds": rounds,
                "to BFD down s (p50)": round(statistics.median(down), 3) if down else "-",
                "route out s (p50)": round(statistics.median(gone), 3),
                "route out s (max)": round(max(gone), 3),
                "out / detection": round(statistics.median(gone) / detection, 2),
                "route back s (p50)": round(statistics.median(back), 2)}
    finally:
        lab.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    need_bgp_tools()
    rounds = args.n or 3
    rows = [_config("BFD 100 ms x 3", 100, 3, 90, rounds), _config("BFD 300 ms x 3", 300, 3, 90, rounds),
            _config("no BFD (hold timer)", None, 3, 9, 1)]
    goals = {f"{r['config']}: route out <= 2x detection time": {
        "measured": f"{r['route out s (p50)']} s / {r['detection s']} s", "met": r["out / detection"] <= 2}
        for r in rows[:2]}
    return {"rows": rows, "goals": goals,
            "bfd vs hold timer (route out)": round(rows[2]["route out s (p50)"] / rows[0]["route out s (p50)"], 1)}
