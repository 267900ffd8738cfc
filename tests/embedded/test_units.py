"""Pure functions: selectors, the three patch kinds, validation helpers."""

from __future__ import annotations

import pytest

from kr_core.embedded.errors import ApiError
from kr_core.embedded.patch import json_patch, merge_patch, strategic_merge
from kr_core.embedded.selectors import labels_match, parse_field_selector, parse_label_selector


@pytest.mark.parametrize(("sel", "labels", "want"), [
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "c"}, False),
    ("a!=b", {}, True),
    ("a in (x, y),b", {"a": "y", "b": ""}, True),
    ("a notin (x,y)", {"a": "x"}, False),
    ("a notin (x,y)", {}, True),
    ("!a", {"a": "1"}, False),
    ("example.com/role=web,!legacy", {"example.com/role": "web"}, True),
    ("", {"x": "y"}, True),
])
def test_label_selectors(sel: str, labels: dict[str, str], want: bool) -> None:
    assert labels_match(parse_label_selector(sel), labels) is want


@pytest.mark.parametrize("bad", ["a in x", "a=(b", "=b", "a in (x", "a b"])
def test_bad_label_selectors(bad: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_label_selector(bad)
    assert e.value.code == 400


def test_field_selector() -> None:
    pred = parse_field_selector("spec.nodeName=n1,metadata.namespace!=kube-system", "Pod")
    assert pred({"metadata": {"namespace": "a"}, "spec": {"nodeName": "n1"}})
    assert not pred({"metadata": {"namespace": "kube-system"}, "spec": {"nodeName": "n1"}})
    assert parse_field_selector("spec.nodeName=", "Pod")({"spec": {}})
    with pytest.raises(ApiError):
        parse_field_selector("spec.nodeName=x", "Service")


def test_merge_patch() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None, "d": 3}, "l": [2]}) == \
        {"a": {"c": 2, "d": 3}, "l": [2]}


def test_json_patch() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    out = json_patch(doc, [{"op": "add", "path": "/a/1", "value": 9}, {"op": "add", "path": "/a/-", "value": 3},
                           {"op": "move", "from": "/b/c", "path": "/d"}, {"op": "test", "path": "/d", "value": 1},
                           {"op": "copy", "from": "/d", "path": "/e~1f"}])
    assert out == {"a": [1, 9, 2, 3], "b": {}, "d": 1, "e/f": 1} and doc == {"a": [1, 2], "b": {"c": 1}}
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "test", "path": "/a/0", "value": 5}])
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "remove", "path": "/zz"}])


def test_strategic_merge() -> None:
    svc = {"spec": {"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}], "selector": {"x": "1"}}}
    # kubectl apply's shape: order directive plus a delete of a keyed item
    out = strategic_merge(svc, {"spec": {"$setElementOrder/ports": [{"port": 82}, {"port": 80}],
                                         "ports": [{"port": 82, "name": "c"}, {"port": 81, "$patch": "delete"}]}})
    assert out["spec"]["ports"] == [{"port": 82, "name": "c"}, {"port": 80, "name": "a"}]
    pod = {"spec": {"containers": [{"name": "c", "image": "a", "ports": [{"containerPort": 1}]}]},
           "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}]}}
    out = strategic_merge(pod, {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 2}]},
                                                        {"name": "d", "image": "b"}]},
                                "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert [c["name"] for c in out["spec"]["containers"]] == ["c", "d"]
    assert out["spec"]["containers"][0] == {"name": "c", "image": "a", "ports": [{"containerPort": 1},
                                                                                 {"containerPort": 2}]}
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "True"}, {"type": "X", "status": "True"}]
    out = strategic_merge(pod, {"spec": {"containers": [{"name": "z"}, {"$patch": "replace"}]}})
    assert out["spec"]["containers"] == [{"name": "z"}]
    out = strategic_merge({"metadata": {"finalizers": ["a", "b"]}},
                          {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"]}})
    assert out["metadata"]["finalizers"] == ["b", "c"]
    out = strategic_merge({"spec": {"type": "NodePort", "x": 1}}, {"spec": {"$retainKeys": ["type"], "type": "A"}})
    assert out == {"spec": {"type": "A"}}
