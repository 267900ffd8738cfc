"""kr's BFD speaker against BIRD 2's, in network namespaces made by :mod:`.netlab`.

The BGP hold time is 90 s on both sides, so routes that leave the kernel within the wait below (30 s) were
withdrawn because BFD detected the failure, not because the hold timer expired.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import grpc
import pytest

from kr_core.net import netns
from kr_plugins.bgp_routing.bfd import Packet, State

from .netlab import EXT_IP, LabNode, NetLab, sh, wait_for

pytestmark = pytest.mark.root

ANNOUNCED = "198.51.100.0/24"
BIRD_BFD = """protocol bfd {
  interface "*" { min rx interval 100 ms; min tx interval 100 ms; idle tx interval 1000 ms; multiplier 3; };
}
"""
KR_BFD = "{enabled: true, detection_multiplier: 3, desired_min_tx_interval: 100, required_min_rx_interval: 100}"
HOLD = 90
# BIRD: a long hold time; after BFD brought its session down, retry soon (its defaults wait 60 s, then 5 s)
BIRD_BGP = f"hold time {HOLD}; error wait time 1, 2; connect delay time 1; bfd on;"


def bfd_items(node: LabNode) -> list[dict[str, Any]]:
    return [i for i in node.plugin().state()["items"] if i["kind"] == "bfd"]


def bfd_state(node: LabNode) -> str:
    items = bfd_items(node)
    return items[0]["state"] if items else ""


def admin_state(node: LabNode, peer: str) -> str:
    """gobgpd's admin state of ``peer`` ("" while gobgpd does not have it)."""
    sp = node.plugin().sp
    assert sp is not None
    api = sp.g.api
    try:
        for r in sp.stub.ListPeer(api.ListPeerRequest(address=peer), timeout=5):
            return str(api.PeerState.AdminState.Name(r.peer.state.admin_state))
    except grpc.RpcError:
        pass
    return ""


def bird_bfd_up(lab: NetLab, ip: str) -> bool:
    return any(ip in line and " Up " in line for line in lab.birdc("show", "bfd", "sessions").splitlines())


def metric(node: LabNode, text: str) -> bool:
    from prometheus_client import generate_latest

    assert node.agent is not None
    return text in generate_latest(node.agent.metrics.registry).decode()


def start(lab: NetLab, node: LabNode, bfd: str, **flags: Any) -> None:
    lab.start_bird([node], exports=[ANNOUNCED], extra=BIRD_BFD, template_extra=BIRD_BGP)
    node.annotations = {"kube-router.io/peers": f"- remoteip: {EXT_IP}\n  remoteasn: 64600\n  bfd: {bfd}\n"}
    lab.start_agent(node, **{"bgp-holdtime": float(HOLD), **flags})


def test_bfd_with_bird_detects_silent_loss_and_recovers(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = netlab_factory(1)
    n1 = lab.nodes[0]
    start(lab, n1, KR_BFD)
    lab.wait_established(n1, [EXT_IP])
    net = ANNOUNCED.split("/")[0]
    wait_for(lambda: net in n1.routes(), 15, "BIRD's route in node-1's kernel")
    wait_for(lambda: bfd_state(n1) == "UP", 15, "kr's BFD session Up")
    wait_for(lambda: bird_bfd_up(lab, n1.ip), 15, "BIRD's BFD session Up")
    item = bfd_items(n1)[0]
    assert item["peer"] == EXT_IP and item["local"] == n1.ip and item["remote_disc"] != 0
    assert item["tx_interval_ms"] == 100 and item["detection_time_ms"] == 300
    assert n1.plugin().state()["summary"]["bfd_up"] == 1
    assert metric(n1, f'kr_bgp_bfd_session_up{{peer="{EXT_IP}"}} 1.0')
    assert "Hold timer:" in lab.birdc("show", "protocols", "all", "node_1")
    assert f"/{HOLD}" in lab.birdc("show", "protocols", "all", "node_1")  # the negotiated hold time

    # the link silently drops everything between node-1 and BIRD (no link down, no TCP reset)
    for chain, side in (("INPUT", "-s"), ("OUTPUT", "-d")):
        sh(lab.ext, "iptables", "-I", chain, side, n1.ip, "-j", "DROP")
    t0 = time.monotonic()
    wait_for(lambda: net not in n1.routes(), HOLD / 3, "BIRD's route withdrawn from node-1's kernel by BFD")
    gone = time.monotonic() - t0
    assert lab.peer_states(n1).get(EXT_IP) != "ESTABLISHED"
    item = bfd_items(n1)[0]
    assert item["state"] == "DOWN" and item["diag"] == "DETECTION_EXPIRED" and item["bgp_held_down"]
    assert metric(n1, f'kr_bgp_bfd_session_up{{peer="{EXT_IP}"}} 0.0')
    print(f"silent loss: BFD down and BIRD's route out of the kernel {gone:.2f} s later "
          f"(detection time 0.3 s, hold time {HOLD} s)")
    assert admin_state(n1, EXT_IP) == "DOWN"

    # gobgpd dies while BFD holds the peer down: the restarted gobgpd gets the peer disabled again
    old_pid = n1.plugin().daemon.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: n1.plugin().daemon.pid != old_pid and n1.plugin().daemon.alive(), 10, "gobgpd restarted")
    wait_for(lambda: admin_state(n1, EXT_IP) == "DOWN", 15, "the re-added peer disabled again")

    # the path heals: BFD Up, the peer is enabled again, the route is back
    for chain, side in (("INPUT", "-s"), ("OUTPUT", "-d")):
        sh(lab.ext, "iptables", "-D", chain, side, n1.ip, "-j", "DROP")
    t0 = time.monotonic()
    wait_for(lambda: bfd_state(n1) == "UP", 15, "kr's BFD session Up again")
    lab.wait_established(n1, [EXT_IP], timeout=30)
    wait_for(lambda: net in n1.routes(), 15, "BIRD's route back in node-1's kernel")
    print(f"path healed: BFD Up, BGP established and the route back in {time.monotonic() - t0:.2f} s")
    assert not bfd_items(n1)[0]["bgp_held_down"]

    # bad input, applied live: an invalid bfd setting is logged against the node and the peer runs without BFD
    n1.annotations["kube-router.io/peers"] = (f"- remoteip: {EXT_IP}\n  remoteasn: 64600\n"
                                              "  bfd: {enabled: true, detection_multiplier: 0}\n")
    lab.publish(n1.node())
    wait_for(lambda: not bfd_items(n1), 10, "BFD session removed")
    assert any(k.startswith("node node-1: ") and "detection multiplier 0" in k and "without BFD" in k
               for k in n1.plugin()._logged), n1.plugin()._logged
    assert not metric(n1, "kr_bgp_bfd_session_up{")
    lab.wait_established(n1, [EXT_IP], timeout=30)  # kr's AdminDown does not take BIRD's BGP session down
    # (the changed peer settings may have reset the session: its routes come back after it is established)
    wait_for(lambda: net in n1.routes(), 15, "BIRD's route in node-1's kernel without BFD")


def test_enable_bfd_flag_for_global_peers(netlab_factory) -> None:  # type: ignore[no-untyped-def]
    """--enable-bfd with the --bfd-* parameters applies to the --peer-router-ips peers."""
    lab = netlab_factory(1)
    n1 = lab.nodes[0]
    lab.start_bird([n1], exports=[ANNOUNCED], extra=BIRD_BFD, template_extra=BIRD_BGP)
    lab.start_agent(n1, **{"peer-router-ips": [EXT_IP], "peer-router-asns": [64600], "enable-bfd": True,
                           "bfd-desired-min-tx-interval": 200, "bfd-required-min-rx-interval": 150,
                           "bfd-detection-multiplier": 4})
    lab.wait_established(n1, [EXT_IP])
    wait_for(lambda: bfd_state(n1) == "UP", 15, "kr's BFD session Up")
    wait_for(lambda: bird_bfd_up(lab, n1.ip), 15, "BIRD's BFD session Up")
    item = bfd_items(n1)[0]
    # BIRD asks for 100 ms: we send every max(200, 100) ms; BIRD sends every max(100, 150) ms, multiplier 3
    assert item["tx_interval_ms"] == 200 and item["detection_time_ms"] == 450 and item["detect_mult"] == 4

    # RFC 5881 5: single hop only, a packet that crossed a router (TTL below 255) is discarded
    def send(ttl: int) -> None:
        pkt = Packet(state=State.UP, my_disc=item["remote_disc"], your_disc=item["local_disc"], detect_mult=3,
                     desired_min_tx=100_000, required_min_rx=100_000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            s.bind((EXT_IP, 0))
            s.sendto(pkt.encode(), (n1.ip, 3784))

    before = bfd_items(n1)[0]["discarded"]
    netns.call_in(lab.ext, send, 64)
    wait_for(lambda: bfd_items(n1)[0]["discarded"] == before + 1, 5, "the TTL 64 packet discarded")
    assert bfd_items(n1)[0]["state"] == "UP"
