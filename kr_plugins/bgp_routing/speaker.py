"""A thin typed client for gobgpd's gRPC API (GoBGP v3): global config, peers, paths, defined sets, policies.

Only this module and :mod:`.injector` touch protobuf messages; the rest of the plugin works with the plain
dataclasses of :mod:`.desired` and :mod:`.policy`.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.experimental
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.any_pb2 import Any as PbAny

from .desired import GlobalSpec, PeerSpec
from .policy import DefinedSet, Statement
from .stubs import GobgpApi

log = logging.getLogger("kr.bgp_routing.speaker")

RPC_TIMEOUT = 10.0


@dataclass(frozen=True)
class PeerStatus:
    address: str
    asn: int
    type: str  # internal / external
    state: str  # ESTABLISHED, ACTIVE, ...
    received: int = 0
    accepted: int = 0
    advertised: int = 0
    uptime: int = 0


@dataclass(frozen=True)
class LearnedPath:
    prefix: str
    next_hop: str
    neighbor: str
    withdraw: bool
    family: int


class Speaker:
    def __init__(self, g: GobgpApi, target: str) -> None:
        self.g = g
        self.target = target
        # the WatchEvent init dump is the whole table in one message: allow large ones. Streams are read
        # on the calling thread (no hand-over from gRPC's polling thread per message): the best-path
        # stream's per-path messages cost about half as much
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 1 << 30),
            (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)])
        self.stub = g.grpc.GobgpApiStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def family(self, fam: int) -> Any:
        api = self.g.api
        return api.Family(afi=api.Family.AFI_IP if fam == 4 else api.Family.AFI_IP6, safi=api.Family.SAFI_UNICAST)

    # ------------------------------------------------------------------------------------------- global
    def started(self) -> bool:
        try:
            r = self.stub.GetBgp(self.g.api.GetBgpRequest(), timeout=RPC_TIMEOUT)
        except grpc.RpcError:
            return False
        return bool(getattr(r, "global").asn)

    def start_bgp(self, spec: GlobalSpec) -> None:
        api = self.g.api
        gl = api.Global(asn=spec.asn, router_id=spec.router_id, listen_port=spec.port,
                        listen_addresses=list(spec.listen_addresses))
        if spec.graceful_restart:
            gl.graceful_restart.CopyFrom(api.GracefulRestart(enabled=True, restart_time=spec.gr_time,
                                                             deferral_time=spec.gr_deferral))
        self.stub.StartBgp(api.StartBgpRequest(**{"global": gl}), timeout=RPC_TIMEOUT)

    def stop_bgp(self) -> None:
        self.stub.StopBgp(self.g.api.StopBgpRequest(), timeout=RPC_TIMEOUT)

    # ------------------------------------------------------------------------------------------- peers
    def _peer_msg(self, p: PeerSpec) -> Any:
        api = self.g.api
        peer = api.Peer(
            conf=api.PeerConf(neighbor_address=p.address, peer_asn=p.asn, auth_password=p.password,
                              description=p.description),
            transport=api.Transport(remote_port=p.port, local_address=p.local_address),
            timers=api.Timers(config=api.TimersConfig(connect_retry=p.connect_retry, hold_time=p.hold_time,
                                                      keepalive_interval=max(1, p.hold_time // 3))),
        )
        if p.multihop_ttl >= 2:
            peer.ebgp_multihop.CopyFrom(api.EbgpMultihop(enabled=True, multihop_ttl=p.multihop_ttl))
        if p.rr_client:
            peer.route_reflector.CopyFrom(api.RouteReflector(route_reflector_client=True,
                                                             route_reflector_cluster_id=p.rr_cluster_id))
        if p.graceful_restart:
            peer.graceful_restart.CopyFrom(api.GracefulRestart(enabled=True, restart_time=p.gr_time,
                                                               deferral_time=p.gr_deferral))
        for fam in p.families:
            afi = api.AfiSafi(config=api.AfiSafiConfig(family=self.family(fam), enabled=True))
            if p.graceful_restart:
                afi.mp_graceful_restart.CopyFrom(api.MpGracefulRestart(config=api.MpGracefulRestartConfig(enabled=True)))
            peer.afi_safis.append(afi)
        return peer

    def add_peer(self, p: PeerSpec) -> None:
        self.stub.AddPeer(self.g.api.AddPeerRequest(peer=self._peer_msg(p)), timeout=RPC_TIMEOUT)

    def delete_peer(self, address: str) -> None:
        self.stub.DeletePeer(self.g.api.DeletePeerRequest(address=address), timeout=RPC_TIMEOUT)

    def soft_reset(self, address: str, direction: str) -> None:
        """Re-evaluate a peer's routes against changed policies (``direction`` 'in' or 'out'), no session reset."""
        api = self.g.api
        d = api.ResetPeerRequest.OUT if direction == "out" else api.ResetPeerRequest.IN
        self.stub.ResetPeer(api.ResetPeerRequest(address=address, soft=True, direction=d), timeout=RPC_TIMEOUT)

    def disable_peer(self, address: str, communication: str = "") -> None:
        """Tear the BGP session down at once and keep it down (admin down): gobgpd drops the peer's routes
        without waiting for the hold timer (BFD saw the path fail)."""
        self.stub.DisablePeer(self.g.api.DisablePeerRequest(address=address, communication=communication),
                              timeout=RPC_TIMEOUT)

    def enable_peer(self, address: str) -> None:
        """Undo :meth:`disable_peer`: gobgpd connects again."""
        self.stub.EnablePeer(self.g.api.EnablePeerRequest(address=address), timeout=RPC_TIMEOUT)

    def list_peers(self) -> list[PeerStatus]:
        api = self.g.api
        out = []
        for r in self.stub.ListPeer(api.ListPeerRequest(enableAdvertised=True), timeout=RPC_TIMEOUT):
            p = r.peer
            recv = acc = adv = 0
            for a in p.afi_safis:
                recv += a.state.received
                acc += a.state.accepted
                adv += a.state.advertised
            out.append(PeerStatus(
                address=p.conf.neighbor_address, asn=p.conf.peer_asn or p.state.peer_asn,
                type="internal" if p.state.type == api.INTERNAL else "external",
                state=api.PeerState.SessionState.Name(p.state.session_state),
                received=recv, accepted=acc, advertised=adv,
                uptime=max(0, int(time.time()) - p.timers.state.uptime.seconds)
                if p.state.session_state == api.PeerState.ESTABLISHED and p.timers.state.HasField("uptime") else 0,
            ))
        return out

    # ------------------------------------------------------------------------------------------- paths
    def _path(self, prefix: str, next_hop: str) -> Any:
        api, attr = self.g.api, self.g.attr
        net = ipaddress.ip_network(prefix, strict=False)
        nlri, origin = PbAny(), PbAny()
        nlri.Pack(attr.IPAddressPrefix(prefix=str(net.network_address), prefix_len=net.prefixlen))
        origin.Pack(attr.OriginAttribute(origin=0))
        pattrs = [origin]
        nh = PbAny()
        if net.version == 4:
            nh.Pack(attr.NextHopAttribute(next_hop=next_hop))
        else:
            nh.Pack(attr.MpReachNLRIAttribute(family=self.family(6), next_hops=[next_hop], nlris=[nlri]))
        pattrs.append(nh)
        return api.Path(family=self.family(net.version), nlri=nlri, pattrs=pattrs)

    def add_path(self, prefix: str, next_hop: str) -> bytes:
        r = self.stub.AddPath(self.g.api.AddPathRequest(table_type=self.g.api.GLOBAL, path=self._path(prefix, next_hop)),
                              timeout=RPC_TIMEOUT)
        return bytes(r.uuid)

    def delete_path(self, uuid: bytes, prefix: str) -> None:
        net = ipaddress.ip_network(prefix, strict=False)
        self.stub.DeletePath(self.g.api.DeletePathRequest(table_type=self.g.api.GLOBAL, family=self.family(net.version),
                                                          uuid=uuid), timeout=RPC_TIMEOUT)

    def decode_path(self, p: Any) -> LearnedPath | None:
        attr = self.g.attr
        n = attr.IPAddressPrefix()
        if not p.nlri.Unpack(n):
            return None
        fam = 6 if ":" in n.prefix else 4
        nh = ""
        for a in p.pattrs:
            if a.Is(attr.NextHopAttribute.DESCRIPTOR):
                x = attr.NextHopAttribute()
                a.Unpack(x)
                nh = x.next_hop
            elif a.Is(attr.MpReachNLRIAttribute.DESCRIPTOR):
                x = attr.MpReachNLRIAttribute()
                a.Unpack(x)
                if x.next_hops:
                    nh = x.next_hops[0]
        neighbor = p.neighbor_ip if p.neighbor_ip not in ("", "<nil>") else ""
        return LearnedPath(f"{n.prefix}/{n.prefix_len}", nh, neighbor, p.is_withdraw, fam)

    def watch_best(self) -> Iterator[tuple[bool, list[LearnedPath]]]:
        """(is the init dump, paths) per message of the best-path stream. The first message is the whole
        current table (gobgpd sends the ``init`` dump as one message), later ones are changes. Ends with
        grpc.RpcError.

        The responses are parsed as :func:`_slim_watch_type` (only the fields the injector reads; the rest
        is skipped by the C parser): reading ``api.Path`` messages field by field costs ~7 us per path,
        which was most of the time from gobgpd's table to the kernel."""
        api = self.g.api
        flt = api.WatchEventRequest.Table.Filter
        req = api.WatchEventRequest(table=api.WatchEventRequest.Table(filters=[flt(type=flt.BEST, init=True)]))
        service = api.DESCRIPTOR.services_by_name["GobgpApi"].full_name
        method = self.channel.unary_stream(f"/{service}/WatchEvent", request_serializer=req.__class__.SerializeToString,
                                           response_deserializer=_slim_watch_type().FromString)
        first = True
        call = method(req)
        try:
            for ev in call:
                out = []
                for p in ev.table.paths:
                    lp = decode_slim_path(p)
                    if lp is not None:
                        out.append(lp)
                if out or first:
                    yield first, out
                first = False
        finally:  # the consumer stopped reading (or the stream broke): end the RPC, keep the channel
            call.cancel()

    def table_counts(self) -> tuple[int, ...]:
        """(destinations, paths, accepted) of gobgpd's global RIB, IPv4 then IPv6: a cheap probe (no path
        is sent) of whether the table is still changing. A family gobgpd does not hold counts as -1."""
        api = self.g.api
        out: list[int] = []
        for fam in (4, 6):
            try:
                r = self.stub.GetTable(api.GetTableRequest(table_type=api.GLOBAL, family=self.family(fam)),
                                       timeout=RPC_TIMEOUT)
                out += (r.num_destination, r.num_path, r.num_accepted)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                out += (-1, -1, -1)
        return tuple(out)

    def list_global(self, fam: int = 4) -> list[LearnedPath]:
        api = self.g.api
        out = []
        for r in self.stub.ListPath(api.ListPathRequest(table_type=api.GLOBAL, family=self.family(fam)),
                                    timeout=RPC_TIMEOUT):
            for p in r.destination.paths:
                if p.best:
                    lp = self.decode_path(p)
                    if lp:
                        out.append(lp)
        return out

    # ------------------------------------------------------------------------------------------- policy
    def _defined_set(self, ds: DefinedSet) -> Any:
        api = self.g.api
        if ds.kind == "prefix":
            return api.DefinedSet(defined_type=api.PREFIX, name=ds.name, prefixes=[
                api.Prefix(ip_prefix=p.prefix, mask_length_min=p.min_len, mask_length_max=p.max_len)
                for p in sorted(ds.prefixes, key=lambda e: e.prefix)])
        return api.DefinedSet(defined_type=api.NEIGHBOR, name=ds.name, list=sorted(ds.neighbors))

    def add_defined_set(self, ds: DefinedSet) -> None:
        self.stub.AddDefinedSet(self.g.api.AddDefinedSetRequest(defined_set=self._defined_set(ds)), timeout=RPC_TIMEOUT)

    def delete_defined_set_entries(self, ds: DefinedSet) -> None:
        self.stub.DeleteDefinedSet(self.g.api.DeleteDefinedSetRequest(defined_set=self._defined_set(ds), all=False),
                                   timeout=RPC_TIMEOUT)

    def _statement(self, name: str, s: Statement) -> Any:
        api = self.g.api
        actions = api.Actions(route_action=api.ACCEPT if s.action == "accept" else api.REJECT)
        if s.next_hop_self:
            actions.nexthop.CopyFrom(api.NexthopAction(self=True))
        if s.communities:
            actions.community.CopyFrom(api.CommunityAction(type=api.CommunityAction.ADD, communities=list(s.communities)))
        if s.prepend_asn and s.prepend_repeat:
            actions.as_prepend.CopyFrom(api.AsPrependAction(asn=s.prepend_asn, repeat=s.prepend_repeat))
        return api.Statement(name=name, conditions=api.Conditions(
            prefix_set=api.MatchSet(type=api.MatchSet.ANY, name=s.prefix_set),
            neighbor_set=api.MatchSet(type=api.MatchSet.ANY, name=s.neighbor_set)), actions=actions)

    def add_policy(self, name: str, statements: tuple[Statement, ...]) -> None:
        api = self.g.api
        pol = api.Policy(name=name, statements=[self._statement(f"{name}_stmt{i}", s) for i, s in enumerate(statements)])
        self.stub.AddPolicy(api.AddPolicyRequest(policy=pol), timeout=RPC_TIMEOUT)

    def delete_policy(self, name: str) -> None:
        api = self.g.api
        self.stub.DeletePolicy(api.DeletePolicyRequest(policy=api.Policy(name=name), all=True), timeout=RPC_TIMEOUT)

    def assign(self, direction: str, policy: str | None, default_accept: bool) -> None:
        """Make ``policy`` (None: no policy at all) the global import/export policy."""
        api = self.g.api
        a = api.PolicyAssignment(name="global", direction=api.EXPORT if direction == "export" else api.IMPORT,
                                 policies=[api.Policy(name=policy)] if policy else [],
                                 default_action=api.ACCEPT if default_accept else api.REJECT)
        self.stub.SetPolicyAssignment(api.SetPolicyAssignmentRequest(assignment=a), timeout=RPC_TIMEOUT)


# ----------------------------------------------------------------------------------- slim watch decoding

@functools.cache
def _slim_watch_type() -> Any:
    """A message class wire-compatible with ``apipb.WatchEventResponse`` that keeps only what the injector
    reads: ``table.paths[]`` with ``nlri`` and ``pattrs`` as raw ``Any`` bytes (field 1, 2), ``is_withdraw``
    (5) and ``neighbor_ip`` (15). Built at run time from a descriptor (field numbers of GoBGP's gobgp.proto),
    so nothing is generated or committed."""
    fd = descriptor_pb2.FileDescriptorProto(name="kr_bgp_slim_watch.proto", package="krbgpslim", syntax="proto3")
    f = descriptor_pb2.FieldDescriptorProto
    path = fd.message_type.add(name="Path")
    path.field.add(name="nlri", number=1, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    path.field.add(name="pattrs", number=2, type=f.TYPE_BYTES, label=f.LABEL_REPEATED)
    path.field.add(name="is_withdraw", number=5, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
    path.field.add(name="neighbor_ip", number=15, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    table = fd.message_type.add(name="TableEvent")
    table.field.add(name="paths", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED, type_name=".krbgpslim.Path")
    resp = fd.message_type.add(name="WatchEventResponse")
    resp.field.add(name="table", number=3, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                   type_name=".krbgpslim.TableEvent")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("krbgpslim.WatchEventResponse"))


_URL = b"type.googleapis.com/apipb."
_PREFIX_ANY = b"\n" + bytes([len(_URL) + len(b"IPAddressPrefix")]) + _URL + b"IPAddressPrefix\x12"
_NEXT_HOPS: dict[bytes, str | None] = {}  # serialized attribute Any -> its next hop (None: not a next hop)


def decode_slim_path(p: Any) -> LearnedPath | None:
    """The :class:`LearnedPath` of one path of :func:`_slim_watch_type` (None when its NLRI is not an IP
    prefix or does not parse): the NLRI and attributes are read from their wire bytes; paths share a few
    attribute encodings, so next hops are looked up by the attribute's bytes."""
    try:
        prefix = _ip_prefix(p.nlri)
    except (ValueError, IndexError):
        return None
    if prefix is None:
        return None
    nh = ""
    for a in p.pattrs:
        try:
            got = _NEXT_HOPS[a]
        except KeyError:
            got = _attr_next_hop(a)
        if got is not None:
            nh = got
    neighbor = p.neighbor_ip
    if neighbor == "<nil>":
        neighbor = ""
    return LearnedPath(prefix, nh, neighbor, p.is_withdraw, 6 if ":" in prefix else 4)


def _ip_prefix(nlri: bytes) -> str | None:
    """``addr/len`` of a serialized ``Any`` holding an ``IPAddressPrefix`` (None: another NLRI type)."""
    if nlri.startswith(_PREFIX_ANY) and nlri[len(_PREFIX_ANY)] < 0x80:  # the usual encoding, no generic parse
        value = nlri[len(_PREFIX_ANY) + 1:]
        if len(value) > 4 and value[0] == 0x08 and value[1] < 0x80 and value[2] == 0x12 and value[3] == len(value) - 4:
            return f"{value[4:].decode()}/{value[1]}"
    url, value = _any(nlri)
    if url != "apipb.IPAddressPrefix":
        return None
    plen, addr = 0, ""
    for num, v in _wire_fields(value):
        if num == 1 and isinstance(v, int):
            plen = v
        elif num == 2 and isinstance(v, bytes):
            addr = v.decode()
    if not addr:
        raise ValueError("IPAddressPrefix without prefix")
    return f"{addr}/{plen}"


def _attr_next_hop(a: bytes) -> str | None:
    """The next hop in a serialized attribute ``Any`` (``NextHopAttribute``, or the first of an
    ``MpReachNLRIAttribute``); None for other attributes. Caches what is shared between paths."""
    try:
        url, value = _any(a)
        if url == "apipb.NextHopAttribute":
            nh = next((v.decode() for num, v in _wire_fields(value) if num == 1 and isinstance(v, bytes)), "")
        elif url == "apipb.MpReachNLRIAttribute":  # carries the NLRI too: unique per path, not cached
            return next((v.decode() for num, v in _wire_fields(value) if num == 2 and isinstance(v, bytes)), "")
        else:
            nh = None
    except (ValueError, UnicodeDecodeError):
        return None
    if len(_NEXT_HOPS) >= 4096:
        _NEXT_HOPS.clear()
    _NEXT_HOPS[a] = nh
    return nh


def _any(buf: bytes) -> tuple[str, bytes]:
    """(``apipb.X`` of the type URL, value bytes) of a serialized ``google.protobuf.Any``."""
    url, value = "", b""
    for num, v in _wire_fields(buf):
        if num == 1 and isinstance(v, bytes):
            url = v.decode()
        elif num == 2 and isinstance(v, bytes):
            value = v
    return url[url.rfind("/") + 1:], value


def _wire_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a serialized message: an int for varints, bytes otherwise.
    Raises ValueError on truncated or malformed input."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield key >> 3, v
            continue
        if wire == 2:
            size, i = _varint(buf, i)
        elif wire == 1:
            size = 8
        elif wire == 5:
            size = 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i + size > n:
            raise ValueError("truncated field")
        yield key >> 3, buf[i:i + size]
        i += size


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
