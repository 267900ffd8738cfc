"""The pure diff: committed vs desired -> exactly the IPVS operations needed."""

from __future__ import annotations

import ipaddress

from kr_plugins.ipvs_proxy.ipvs import ADD_DEST, ADD_SVC, ADD_VS, DEL_DEST, DEL_SVC, SET_DEST, SET_SVC
from kr_plugins.ipvs_proxy.model import Desired, VirtualServer, VKey, VParams, build_service
from kr_plugins.ipvs_proxy.sync import commit, plan

from .fixtures import NODE, OPTS, ep, eps, svc

K = VKey(4, 6, "10.96.0.10", 80)


DEFAULT = VParams()


def vs(dests, params=DEFAULT):
    return VirtualServer(K, params, {d: (1, 0) for d in dests}, "default/x")


def test_cold_add_then_nothing_to_do():
    desired = {K: vs([("10.244.1.1", 8080), ("10.244.1.2", 8080)])}
    p = plan({}, desired)
    assert [o[0] for o in p.ops] == [ADD_SVC, ADD_DEST, ADD_DEST]
    committed = {}
    commit(committed, p.ops)
    assert plan(committed, desired).ops == []


def test_endpoint_change_touches_only_that_destination():
    committed = {K: (VParams(), {("10.244.1.1", 8080): (1, 0), ("10.244.1.2", 8080): (1, 0)})}
    desired = {K: vs([("10.244.1.1", 8080), ("10.244.1.3", 8080)])}
    p = plan(committed, desired)
    assert p.ops == [(DEL_DEST, K, ("10.244.1.2", 8080)), (ADD_DEST, K, ("10.244.1.3", 8080, 1, 0))]
    commit(committed, p.ops)
    assert plan(committed, desired).ops == []


def test_parameter_change_is_in_place_never_delete_and_recreate():
    committed = {K: (VParams(), {("10.244.1.1", 8080): (1, 0)})}
    desired = {K: vs([("10.244.1.1", 8080)], VParams("mh", 0x8, 0))}
    assert plan(committed, desired).ops == [(SET_SVC, K, VParams("mh", 0x8, 0))]
    desired[K].dests[("10.244.1.1", 8080)] = (5, 0)
    assert plan(committed, desired).ops[-1] == (SET_DEST, K, ("10.244.1.1", 8080, 5, 0))


def test_garbage_collection_and_excluded_cidrs():
    stray = VKey(4, 6, "1.2.3.4", 1234)
    kept = VKey(4, 6, "10.200.0.1", 80)
    committed = {stray: (VParams(), {}), kept: (VParams(), {})}
    p = plan(committed, {}, excluded_cidrs=[ipaddress.ip_network("10.200.0.0/16")])
    assert p.ops == [(DEL_SVC, stray, None)] and p.kept == [kept]


def test_graceful_termination_sets_weight_zero_once():
    committed = {K: (VParams(), {("10.244.1.1", 8080): (1, 0), ("10.244.1.2", 8080): (1, 0)})}
    desired = {K: vs([("10.244.1.1", 8080)])}
    p = plan(committed, desired, graceful=True)
    assert p.ops == [(SET_DEST, K, ("10.244.1.2", 8080, 0, 0))] and p.drain == [(K, ("10.244.1.2", 8080))]
    commit(committed, p.ops)
    p2 = plan(committed, desired, graceful=True)
    assert p2.ops == [] and p2.drain == [(K, ("10.244.1.2", 8080))]
    # the endpoint comes back: weight restored
    desired2 = {K: vs([("10.244.1.1", 8080), ("10.244.1.2", 8080)])}
    assert plan(committed, desired2, graceful=True).ops == [(SET_DEST, K, ("10.244.1.2", 8080, 1, 0))]


def test_ac_p1_strays_owned_by_kr_are_removed_from_a_full_plan():
    model = build_service(svc(externalIPs=["1.1.1.1", "2.2.2.2"]), [], NODE, OPTS)
    d = Desired.build([model])
    committed = {VKey(4, 6, "1.2.3.4", 1234): (VParams(), {}), VKey(4, 6, "5.6.7.8", 5678): (VParams(), {})}
    p = plan(committed, d.vservers)
    assert p.count(DEL_SVC) == 2 and p.count(ADD_SVC) == 3


def test_one_service_subset_plan_ignores_the_others():
    a = build_service(svc("a", cluster_ip="10.96.0.1"), [eps("a", [ep("10.244.1.1")])], NODE, OPTS)
    b = build_service(svc("b", cluster_ip="10.96.0.2"), [eps("b", [ep("10.244.1.2")])], NODE, OPTS)
    d = Desired.build([a, b])
    committed = {}
    commit(committed, plan({}, d.vservers, whole=True).ops)
    a2 = build_service(svc("a", cluster_ip="10.96.0.1"), [eps("a", [ep("10.244.1.1"), ep("10.244.1.9")])], NODE, OPTS)
    p = plan(committed, a2.vservers, keys=list(a2.vservers))
    assert p.ops == [(ADD_DEST, VKey(4, 6, "10.96.0.1", 8080), ("10.244.1.9", 80, 1, 0))]


def test_whole_plan_adds_new_servers_as_one_op_and_commit_shares_then_copies_on_write():
    k2 = VKey(4, 6, "10.96.0.11", 80)
    shared = {("10.244.1.1", 8080): (1, 0)}
    desired = {K: VirtualServer(K, DEFAULT, shared, "default/x"), k2: VirtualServer(k2, DEFAULT, shared, "default/x")}
    p = plan({}, desired, whole=True)
    assert p.ops == [(ADD_VS, K, desired[K]), (ADD_VS, k2, desired[k2])]
    committed = {}
    commit(committed, p.ops)
    assert committed[K] == (DEFAULT, shared) and committed[K][1] is shared  # no copy on a cold sync
    assert plan(committed, desired, whole=True).ops == []
    # an endpoint of K changes: the committed dict is copied, the model's (shared with k2) never touched
    desired[K] = VirtualServer(K, DEFAULT, {("10.244.1.1", 8080): (1, 0), ("10.244.1.2", 8080): (1, 0)}, "default/x")
    p = plan(committed, desired, keys=[K], whole=True)
    assert p.ops == [(ADD_DEST, K, ("10.244.1.2", 8080, 1, 0))]
    commit(committed, p.ops)
    assert shared == {("10.244.1.1", 8080): (1, 0)} and committed[k2][1] is shared
    assert committed[K][1] == desired[K].dests and plan(committed, desired).ops == []
    # a mixed full plan: known servers are diffed, new ones added whole
    k3 = VKey(4, 6, "10.96.0.12", 80)
    desired[k3] = VirtualServer(k3, DEFAULT, {}, "default/y")
    assert plan(committed, desired, whole=True).ops == [(ADD_VS, k3, desired[k3])]
