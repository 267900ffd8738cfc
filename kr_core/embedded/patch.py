"""The three patch kinds: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

Strategic merge knows the patch merge keys of the fields these resource types use (the Go struct
tags ``patchStrategy:"merge" patchMergeKey:...``) and the directives kubectl sends
(``$patch``, ``$retainKeys``, ``$setElementOrder/<f>``, ``$deleteFromPrimitiveList/<f>``).
"""

from __future__ import annotations

import copy
from typing import Any

from kr_core.embedded.errors import ApiError, bad_request

# field name -> merge key, for lists merged by key (keyed by the field name only: the names are
# unambiguous across the six types served here).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "tolerations": "key",
    "conditions": "type",
    "addresses": "type",
    "ownerReferences": "uid",
    "podIPs": "ip",
    "hostIPs": "ip",
    "resourceClaims": "name",
    "readinessGates": "conditionType",
    "taints": "key",
    "topologySpreadConstraints": "topologyKey",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}
# ports lists: the merge key depends on the parent (container ports vs service ports).
PORT_KEYS = ("containerPort", "port")
# primitive lists merged as sets.
MERGE_PRIMITIVES = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _ptr(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts:
        if isinstance(cur, dict):
            if p not in cur:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: path {p!r} not found")
            cur = cur[p]
        elif isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError) as e:
                raise ApiError(422, "Invalid", f"invalid array index {p!r}") from e
        else:
            raise ApiError(422, "Invalid", f"cannot traverse into {p!r}")
    return cur


def _add(doc: Any, parts: list[str], value: Any, replace: bool = False) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, "Invalid", f"replace operation does not apply: doc is missing key: {last}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            try:
                idx = int(last)
            except ValueError as e:
                raise ApiError(422, "Invalid", f"invalid array index {last!r}") from e
            if replace:
                if not 0 <= idx < len(parent):
                    raise ApiError(422, "Invalid", f"index {idx} out of range")
                parent[idx] = value
            else:
                if not 0 <= idx <= len(parent):
                    raise ApiError(422, "Invalid", f"index {idx} out of range")
                parent.insert(idx, value)
    else:
        raise ApiError(422, "Invalid", "cannot add to a scalar")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise ApiError(422, "Invalid", "cannot remove the root")
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    try:
        if isinstance(parent, dict):
            return parent.pop(last) if last in parent else _missing(last)
        if isinstance(parent, list):
            return parent.pop(int(last))
    except (ValueError, IndexError) as e:
        raise ApiError(422, "Invalid", f"remove operation does not apply: {last!r}") from e
    raise ApiError(422, "Invalid", "cannot remove from a scalar")


def _missing(key: str) -> Any:
    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: remove operation does not apply: doc is missing path: {key}")


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise bad_request(f"invalid json patch operation {op!r}")
        kind = op["op"]
        parts = _ptr(op.get("path", ""))
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")), replace=True)
        elif kind in ("move", "copy"):
            src = _ptr(op.get("from", ""))
            val = _remove(doc, src) if kind == "move" else copy.deepcopy(_walk(doc, src))
            doc = _add(doc, parts, val)
        elif kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {op.get('path')} failed")
        else:
            raise bad_request(f"unknown json patch operation {kind!r}")
    return doc


def _list_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        for it in items:
            if isinstance(it, dict):
                for k in PORT_KEYS:
                    if k in it:
                        return k
        return None
    return MERGE_KEYS.get(field)


def _merge_keyed_list(field: str, orig: list[Any], patch: list[Any], order: list[Any] | None) -> list[Any]:
    key = _list_key(field, patch) or _list_key(field, orig)
    if key is None or not all(isinstance(x, dict) for x in patch):
        if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
            return [x for x in patch if not (isinstance(x, dict) and x.get("$patch") == "replace")]
        return copy.deepcopy(patch)
    if any(x.get("$patch") == "replace" for x in patch):
        return [copy.deepcopy(x) for x in patch if x.get("$patch") != "replace"]
    result = copy.deepcopy(orig)
    for item in patch:
        directive = item.get("$patch")
        kv = item.get(key)
        idx = next((i for i, o in enumerate(result) if isinstance(o, dict) and o.get(key) == kv), None)
        if directive == "delete":
            if idx is not None:
                result.pop(idx)
            continue
        clean = {k: v for k, v in item.items() if k != "$patch"}
        if idx is None:
            result.append(strategic_merge({}, clean))
        else:
            result[idx] = strategic_merge(result[idx], clean)
    if order:
        pos = {repr(o.get(key) if isinstance(o, dict) else o): i for i, o in enumerate(order)}
        result.sort(key=lambda o: pos.get(repr(o.get(key)), len(pos)))
    return result


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge patch for the subset of fields these types use."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return {}
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for k, v in patch.items():
        if k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v if isinstance(v, list) else []
    for k, v in patch.items():
        if k.startswith("$"):
            if k.startswith("$deleteFromPrimitiveList/"):
                f = k.split("/", 1)[1]
                if isinstance(result.get(f), list) and isinstance(v, list):
                    result[f] = [x for x in result[f] if x not in v]
            continue
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            result[k] = strategic_merge(result.get(k), v)
        elif isinstance(v, list):
            cur = result.get(k) if isinstance(result.get(k), list) else []
            if k in MERGE_PRIMITIVES:
                result[k] = cur + [x for x in v if x not in cur]
            elif k == "ports" or k in MERGE_KEYS:
                result[k] = _merge_keyed_list(k, cur, v, orders.get(k))
            else:
                result[k] = copy.deepcopy(v)
        else:
            result[k] = v
    for f, order in orders.items():
        if f not in patch and isinstance(result.get(f), list):
            key = _list_key(f, result[f])
            if key:
                pos = {repr(o.get(key) if isinstance(o, dict) else o): i for i, o in enumerate(order)}
                result[f].sort(key=lambda o, key=key, pos=pos: pos.get(repr(o.get(key)), len(pos)))
    if isinstance(retain, list):
        keep = set(retain)
        result = {k: v for k, v in result.items() if k in keep or k not in _retainable(target, patch)}
    return result


def _retainable(target: Any, patch: dict[str, Any]) -> set[str]:
    keys = set(target.keys()) if isinstance(target, dict) else set()
    return keys | {k for k in patch if not k.startswith("$")}


PATCH_TYPES = {
    "application/merge-patch+json": merge_patch,
    "application/json-patch+json": json_patch,
    "application/strategic-merge-patch+json": strategic_merge,
}
