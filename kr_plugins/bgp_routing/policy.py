"""kube-router's BGP defined sets and export/import policies, as plain data (AC-R2).

:func:`build` computes the desired sets and statements; :class:`PolicyPlan` turns a change of statements into
a hitless versioned swap (``kube_router_exportN`` -> ``N+1``: add the new policy, assign it, delete the old);
the speaker turns these dataclasses into GoBGP API messages.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

POD_CIDR_SET = "podcidrdefinedset"
SERVICE_VIP_SET = "servicevipsdefinedset"
DEFAULT_ROUTE_SET = "defaultroutedefinedset"
CUSTOM_IMPORT_REJECT_SET = "customimportrejectdefinedset"
IBGP_PEER_SET = "iBGPpeerset"
EXTERNAL_PEER_SET = "externalpeerset"
ALL_PEER_SET = "allpeerset"
EXPORT_POLICY = "kube_router_export"
IMPORT_POLICY = "kube_router_import"


def v(name: str, family: int) -> str:
    """Set name per family: the IPv6 variant carries a ``v6`` suffix."""
    return name if family == 4 else name + "v6"


@dataclass(frozen=True)
class PrefixEntry:
    prefix: str
    min_len: int
    max_len: int


@dataclass(frozen=True)
class DefinedSet:
    name: str
    kind: str  # "prefix" or "neighbor"
    prefixes: frozenset[PrefixEntry] = frozenset()
    neighbors: frozenset[str] = frozenset()  # "a.b.c.d/32"

    @property
    def empty(self) -> bool:
        return not self.prefixes and not self.neighbors


@dataclass(frozen=True)
class Statement:
    prefix_set: str
    neighbor_set: str
    action: str  # "accept" or "reject"
    next_hop_self: bool = False
    communities: tuple[str, ...] = ()
    prepend_asn: int | None = None
    prepend_repeat: int = 0


@dataclass(frozen=True)
class Policies:
    sets: dict[str, DefinedSet] = field(default_factory=dict, hash=False)
    export: tuple[Statement, ...] = ()
    import_: tuple[Statement, ...] = ()


@dataclass(frozen=True)
class PolicyInputs:
    pod_cidrs: tuple[str, ...] = ()
    vips: tuple[str, ...] = ()  # addresses
    ibgp_peers: tuple[str, ...] = ()
    external_peers: tuple[str, ...] = ()
    import_reject: tuple[str, ...] = ()
    enable_ibgp: bool = True
    advertise_pod_cidr: bool = True
    override_nexthop: bool = False
    communities: tuple[str, ...] = ()
    prepend_asn: int | None = None
    prepend_repeat: int = 0


def _host(ip: str) -> str:
    return f"{ip}/{32 if ipaddress.ip_address(ip).version == 4 else 128}"


def _pfx(cidr: str) -> PrefixEntry:
    n = ipaddress.ip_network(cidr, strict=False)
    return PrefixEntry(str(n), n.prefixlen, n.prefixlen)


def build(inp: PolicyInputs) -> Policies:
    """Defined sets plus export and import statements, skipping statements whose sets are empty."""
    sets: dict[str, DefinedSet] = {}

    def add(ds: DefinedSet) -> None:
        sets[ds.name] = ds

    for fam in (4, 6):
        def of(xs: Iterable[str], fam: int = fam) -> list[str]:
            return [x for x in xs if ipaddress.ip_network(x, strict=False).version == fam]

        add(DefinedSet(v(POD_CIDR_SET, fam), "prefix", frozenset(_pfx(c) for c in of(inp.pod_cidrs))))
        add(DefinedSet(v(SERVICE_VIP_SET, fam), "prefix", frozenset(_pfx(_host(ip)) for ip in of(inp.vips))))
        add(DefinedSet(v(DEFAULT_ROUTE_SET, fam), "prefix",
                       frozenset({PrefixEntry("0.0.0.0/0" if fam == 4 else "::/0", 0, 0)})))
        add(DefinedSet(v(CUSTOM_IMPORT_REJECT_SET, fam), "prefix",
                       frozenset(PrefixEntry(str(ipaddress.ip_network(c, strict=False)),
                                             ipaddress.ip_network(c, strict=False).prefixlen,
                                             32 if fam == 4 else 128) for c in of(inp.import_reject))))
        ibgp = frozenset(_host(p) for p in of(inp.ibgp_peers))
        ext = frozenset(_host(p) for p in of(inp.external_peers))
        add(DefinedSet(v(IBGP_PEER_SET, fam), "neighbor", neighbors=ibgp))
        add(DefinedSet(v(EXTERNAL_PEER_SET, fam), "neighbor", neighbors=ext))
        add(DefinedSet(v(ALL_PEER_SET, fam), "neighbor", neighbors=ibgp | ext))

    def usable(*names: str) -> bool:
        return all(not sets[n].empty for n in names)

    def peers(base: str, fam: int) -> str | None:
        """The neighbor set for routes of ``fam``: that family's set, else the other one's. kube-router runs one
        session per peer over its primary family carrying both AFIs, so IPv6 routes go to IPv4 neighbors."""
        for f in (fam, 10 - fam):
            if usable(v(base, f)):
                return v(base, f)
        return None

    ext_actions = dict(next_hop_self=inp.override_nexthop, communities=inp.communities,
                       prepend_asn=inp.prepend_asn if inp.prepend_repeat else None,
                       prepend_repeat=inp.prepend_repeat if inp.prepend_asn else 0)
    export: list[Statement] = []
    for fam in (4, 6):
        nb = peers(IBGP_PEER_SET, fam)
        if inp.enable_ibgp and usable(v(POD_CIDR_SET, fam)) and nb:
            export.append(Statement(v(POD_CIDR_SET, fam), nb, "accept"))
    for fam in (4, 6):
        nb = peers(EXTERNAL_PEER_SET, fam)
        if usable(v(SERVICE_VIP_SET, fam)) and nb:
            export.append(Statement(v(SERVICE_VIP_SET, fam), nb, "accept", **ext_actions))
    if inp.advertise_pod_cidr:
        for fam in (4, 6):
            nb = peers(EXTERNAL_PEER_SET, fam)
            if usable(v(POD_CIDR_SET, fam)) and nb:
                export.append(Statement(v(POD_CIDR_SET, fam), nb, "accept", **ext_actions))
    import_: list[Statement] = []
    for fam in (4, 6):
        nb = peers(ALL_PEER_SET, fam)
        if usable(v(SERVICE_VIP_SET, fam)) and nb:
            import_.append(Statement(v(SERVICE_VIP_SET, fam), nb, "reject"))
    for fam in (4, 6):
        nb = peers(ALL_PEER_SET, fam)
        if nb:
            import_.append(Statement(v(DEFAULT_ROUTE_SET, fam), nb, "reject"))
    for fam in (4, 6):
        nb = peers(ALL_PEER_SET, fam)
        if usable(v(CUSTOM_IMPORT_REJECT_SET, fam)) and nb:
            import_.append(Statement(v(CUSTOM_IMPORT_REJECT_SET, fam), nb, "reject"))
    return Policies(sets=sets, export=tuple(export), import_=tuple(import_))


@dataclass
class SetDiff:
    """Entries to add to and remove from one defined set (adds go before the policy swap, removals after)."""

    set: DefinedSet
    add: DefinedSet | None
    remove: DefinedSet | None


def diff_sets(old: dict[str, DefinedSet], new: dict[str, DefinedSet]) -> list[SetDiff]:
    out = []
    for name, want in new.items():
        have = old.get(name, DefinedSet(name, want.kind))
        add_p, rm_p = want.prefixes - have.prefixes, have.prefixes - want.prefixes
        add_n, rm_n = want.neighbors - have.neighbors, have.neighbors - want.neighbors
        add = DefinedSet(name, want.kind, add_p, add_n) if (add_p or add_n or name not in old) else None
        rm = DefinedSet(name, want.kind, rm_p, rm_n) if (rm_p or rm_n) else None
        if add or rm:
            out.append(SetDiff(want, add, rm))
    return out


@dataclass
class VersionedPolicy:
    """One policy slot (export or import) with its version: ``kube_router_exportN``."""

    base: str
    version: int = 0
    statements: tuple[Statement, ...] | None = None  # None: never applied

    @property
    def name(self) -> str:
        return f"{self.base}{self.version}"

    def plan(self, statements: tuple[Statement, ...]) -> tuple[str, str | None] | None:
        """(new policy name, old policy name or None) when the statements changed, else None."""
        if self.statements == statements:
            return None
        old = self.name if self.statements is not None else None
        return f"{self.base}{self.version + 1}", old

    def commit(self, statements: tuple[Statement, ...]) -> None:
        self.version += 1
        self.statements = statements
