"""Deterministic names of kr's network-policy chains and sets (kube-router's scheme, without the version).

Every name is a kube-router prefix + the first 16 characters of base32(sha256(text)). kube-router puts a
per-sync nanosecond ``version`` into the policy- and pod-chain texts, so every full sync renames every chain;
kr leaves it out (``version=""``), so a name depends only on the object: a sync that changes nothing
rewrites nothing. The ``version`` parameter exists so the golden tests can reproduce kube-router's names.

Set names are exactly kube-router's (they never had a version). IPv6 sets get the ``inet6:`` prefix when
rendered for the kernel (:func:`kr_core.net.ipset.set_name`), not here.
"""

from __future__ import annotations

import base64
import functools
import hashlib

POLICY_CHAIN_PREFIX = "KUBE-NWPLCY-"
POD_CHAIN_PREFIX = "KUBE-POD-FW-"
SRC_SET_PREFIX = "KUBE-SRC-"
DST_SET_PREFIX = "KUBE-DST-"

INPUT_CHAIN = "KUBE-ROUTER-INPUT"
FORWARD_CHAIN = "KUBE-ROUTER-FORWARD"
OUTPUT_CHAIN = "KUBE-ROUTER-OUTPUT"
TOP_CHAINS = {"INPUT": INPUT_CHAIN, "FORWARD": FORWARD_CHAIN, "OUTPUT": OUTPUT_CHAIN}
COMMON_CHAIN = "KUBE-NWPLCY-COMMON"
DEFAULT_CHAIN = "KUBE-NWPLCY-DEFAULT"
TAIL_CHAIN = "KUBE-NWPLCY-TAIL"
HELPER_CHAINS = (COMMON_CHAIN, DEFAULT_CHAIN, TAIL_CHAIN)
LOCAL_PODS_SET = "kube-router-local-pods"

#: kube-router's family strings (``api.IPv4Protocol``), part of every hashed text.
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}


@functools.lru_cache(maxsize=1 << 16)
def short_hash(text: str) -> str:
    """kube-router's hash: base32(sha256(text))[:16]."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _fam(family: int) -> str:
    return FAMILY_NAMES[family]


def policy_chain(namespace: str, name: str, family: int, direction: str = "", version: str = "") -> str:
    """``KUBE-NWPLCY-`` + h(ns + name + version + family [+ direction]).

    kube-router has one chain per policy; kr has one per policy and direction (``"ingress"``/``"egress"``),
    because a single chain jumped to from a pod chain cannot tell which pod it is judging (an ingress rule
    would allow a pod's *egress* to another target of the same policy). ``direction=""`` gives
    kube-router's name.
    """
    return POLICY_CHAIN_PREFIX + short_hash(namespace + name + version + _fam(family) + direction)


def pod_chain(namespace: str, pod: str, version: str = "") -> str:
    """``KUBE-POD-FW-`` + h(ns + pod + version); the same name in both families' tables."""
    return POD_CHAIN_PREFIX + short_hash(namespace + pod + version)


def target_set(namespace: str, name: str, family: int, direction: str) -> str:
    """The policy's target pods: ``KUBE-DST-`` for ingress, ``KUBE-SRC-`` for egress, h(ns + name + family)."""
    prefix = DST_SET_PREFIX if direction == "ingress" else SRC_SET_PREFIX
    return prefix + short_hash(namespace + name + _fam(family))


def peer_pod_set(namespace: str, name: str, direction: str, rule: int, family: int) -> str:
    """Pods a rule's peers select: ingress ``KUBE-SRC-``, egress ``KUBE-DST-``."""
    prefix = SRC_SET_PREFIX if direction == "ingress" else DST_SET_PREFIX
    return prefix + short_hash(f"{namespace}{name}{direction}rule{rule}{_fam(family)}pod")


def ipblock_set(namespace: str, name: str, direction: str, rule: int, family: int, peer: int | None = None) -> str:
    """A rule's ipBlocks (hash:net, excepts as nomatch). ``peer`` is set only when kr splits one rule's
    ipBlocks into a set per peer (when an except of one block lies inside another block's CIDR)."""
    prefix = SRC_SET_PREFIX if direction == "ingress" else DST_SET_PREFIX
    suffix = "" if peer is None else f"peer{peer}"
    return prefix + short_hash(f"{namespace}{name}{direction}rule{rule}{_fam(family)}ipblock{suffix}")


def named_port_set(namespace: str, name: str, direction: str, rule: int, port_key: int | str, family: int) -> str:
    """Pods that resolve a rule's named port to one (protocol, number): ``KUBE-DST-``.

    kube-router's ``port_key`` is the group's index; kr passes ``<port index><protocol><number>`` so the
    name stays the same when another group of the rule appears or goes."""
    return DST_SET_PREFIX + short_hash(f"{namespace}{name}{direction}rule{rule}{port_key}{_fam(family)}namedport")


def jump_comment(chain: str) -> str:
    """Comment identifying kr's jump from a built-in chain (kube-router: "kube-router netpol - <hash>")."""
    return "kube-router netpol - " + short_hash(chain)
