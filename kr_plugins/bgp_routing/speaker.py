"""A thin typed client for gobgpd's gRPC API (GoBGP v3): global config, peers, paths, defined sets, policies.

Only this module and :mod:`.pathwire` touch protobuf messages; the rest of the plugin works with the plain
dataclasses of :mod:`.desired`, :mod:`.policy` and :class:`.pathwire.LearnedPath`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.experimental
from google.protobuf.any_pb2 import Any as PbAny

from .desired import GlobalSpec, PeerSpec
from .grpcstream import GrpcStream, StreamError
from .pathwire import LearnedPath, decode_list_messages, decode_watch_messages
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


class Speaker:
    def __init__(self, g: GobgpApi, target: str) -> None:
        self.g = g
        self.target = target
        # grpcio streams are read on the calling thread (no hand-over from gRPC's polling thread per
        # message); the best-path stream and table dumps use GrpcStream (:meth:`watch_changes`)
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 1 << 30),
            (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)])
        self.stub = g.grpc.GobgpApiStub(self.channel)
        self._streams: set[GrpcStream] = set()
        self._streams_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the channel and end the streams being read (their readers get StreamError)."""
        with self._streams_lock:
            self._closed = True
            streams = list(self._streams)
        for st in streams:
            st.close()
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

    def watch_changes(self) -> Iterator[tuple[str, list[LearnedPath]]]:
        """gobgpd's best-path changes as they happen: first ``("registered", [])`` once gobgpd has registered
        the watch (its peer ``END_OF_INIT`` event, sent in the same step: every later change comes on this
        stream), then ``("paths", paths)`` per read of the socket. There is no table dump on the stream
        (``init`` is off: gobgpd would build it as one message of ``Any``-packed paths); the caller reads
        the table with :meth:`dump_best` after ``registered``. Ends by raising :class:`StreamError`."""
        api = self.g.api
        flt = api.WatchEventRequest.Table.Filter
        req = api.WatchEventRequest(peer=api.WatchEventRequest.Peer(),
                                    table=api.WatchEventRequest.Table(filters=[flt(type=flt.BEST, init=False)]))
        with self._stream("WatchEvent", req.SerializeToString()) as stream:
            registered = False
            for blob in stream:
                paths, end_of_init = decode_watch_messages(blob)
                if end_of_init and not registered:
                    registered = True
                    yield "registered", []
                if paths and registered:
                    yield "paths", paths
            raise StreamError("gobgpd ended the watch")

    def dump_best(self, fam: int) -> Iterator[list[LearnedPath]]:
        """The best paths of gobgpd's global table of family ``fam`` (4 or 6), as they arrive: ``ListPath``
        with only the BGP wire encoding of NLRI and attributes (gobgpd builds no ``Any`` messages; it sends
        one message per destination, read many per ``recv``). Raises :class:`StreamError` when the call
        fails (an incomplete dump is never taken for the whole table)."""
        api = self.g.api
        req = api.ListPathRequest(table_type=api.GLOBAL, family=self.family(fam), enable_only_binary=True)
        with self._stream("ListPath", req.SerializeToString()) as stream:
            for blob in stream:
                paths = decode_list_messages(blob, fam)
                if paths:
                    yield paths

    @contextlib.contextmanager
    def _stream(self, method: str, request: bytes) -> Iterator[GrpcStream]:
        """A :class:`GrpcStream` call of ``method``, closed on exit and by :meth:`close`."""
        stream = GrpcStream(self.target, f"/{self.g.api.DESCRIPTOR.services_by_name['GobgpApi'].full_name}/{method}",
                            request, timeout=RPC_TIMEOUT)
        with self._streams_lock:
            if self._closed:
                stream.close()
            self._streams.add(stream)
        try:
            yield stream
        finally:
            with self._streams_lock:
                self._streams.discard(stream)
            stream.close()

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
