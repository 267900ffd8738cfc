"""API semantics above the store: create/get/list/update/patch/delete with defaulting, validation,
allocation, finalizers, namespace lifecycle and optimistic concurrency."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kr_core.embedded import errors
from kr_core.embedded.alloc import AllocationError, Allocator
from kr_core.embedded.defaults import apply_defaults
from kr_core.embedded.patch import PATCH_TYPES
from kr_core.embedded.resources import BY_KIND, Resource
from kr_core.embedded.selectors import labels_match, parse_field_selector, parse_label_selector
from kr_core.embedded.store import Store, jcopy
from kr_core.embedded.validation import validate

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
STATUS_KINDS = {"Pod", "Service", "Node", "Namespace"}
# Kinds whose DELETE returns the object (the others return a Status).
RETURNS_OBJECT = {"Pod", "Service", "Namespace"}
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ns_key(res: Resource, namespace: str | None) -> str:
    return (namespace or "") if res.namespaced else ""


def _filter(res: Resource, label_selector: str | None, field_selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    reqs = parse_label_selector(label_selector)
    fpred = parse_field_selector(field_selector, res.kind)

    def pred(obj: Mapping[str, Any]) -> bool:
        return labels_match(reqs, (obj.get("metadata") or {}).get("labels")) and fpred(obj)

    return pred


def _drop_type_dependent_fields(svc: dict[str, Any], old: dict[str, Any]) -> None:
    """As kube-apiserver does on a Service type change: fields that only make sense for the old type
    are cleared unless the update itself set them."""
    spec, ospec = svc.get("spec") or {}, old.get("spec") or {}
    typ, otyp = spec.get("type", "ClusterIP"), ospec.get("type", "ClusterIP")
    if typ == otyp:
        return
    node_types = ("NodePort", "LoadBalancer")
    if typ not in node_types and otyp in node_types:
        for f in ("externalTrafficPolicy", "healthCheckNodePort"):
            if f in spec and spec.get(f) == ospec.get(f):
                spec.pop(f)
        old_node_ports = {p.get("nodePort") for p in ospec.get("ports") or []}
        for p in spec.get("ports") or []:
            if isinstance(p, dict) and p.get("nodePort") in old_node_ports:
                p.pop("nodePort")
    if typ != "LoadBalancer" and otyp == "LoadBalancer":
        for f in ("allocateLoadBalancerNodePorts", "loadBalancerClass"):
            if f in spec and spec.get(f) == ospec.get(f):
                spec.pop(f)
    if typ == "ExternalName":
        for f in ("sessionAffinity", "internalTrafficPolicy", "sessionAffinityConfig"):
            if spec.get(f) == ospec.get(f):
                spec.pop(f, None)


class Registry:
    def __init__(self, store: Store, allocator: Allocator) -> None:
        self.store = store
        self.alloc = allocator
        with store.lock():
            allocator.load(store.iter_raw("Service"), store.iter_raw("Node"))
            for ns in SYSTEM_NAMESPACES:
                if store.get("Namespace", "", ns) is None:
                    self.create(BY_KIND["Namespace"], None, {"metadata": {"name": ns}})

    # -- helpers ---------------------------------------------------------------------------

    def _check_namespace(self, res: Resource, namespace: str | None) -> None:
        if not res.namespaced:
            return
        ns = self.store.peek("Namespace", "", namespace or "")
        if ns is None:
            raise errors.not_found("", "namespaces", namespace or "")
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise errors.ApiError(403, "Forbidden", f'{res.plural} is forbidden: unable to create new content in '
                                  f'namespace {namespace} because it is being terminated')

    def _validate(self, res: Resource, obj: dict[str, Any]) -> None:
        causes = validate(res.kind, obj, res.namespaced)
        if causes:
            raise errors.invalid(res.kind, res.group, (obj.get("metadata") or {}).get("name") or "", causes)

    def _invalid_from(self, res: Resource, obj: dict[str, Any], e: AllocationError) -> errors.ApiError:
        return errors.invalid(res.kind, res.group, obj["metadata"].get("name", ""), e.causes)

    def _allocate(self, res: Resource, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        try:
            if res.kind == "Service":
                self.alloc.allocate_service(obj, old)
            elif res.kind == "Node":
                self.alloc.allocate_node(obj, old)
        except AllocationError as e:
            raise self._invalid_from(res, obj, e) from e

    def _release(self, res: Resource, obj: dict[str, Any]) -> None:
        if res.kind == "Service":
            self.alloc.release_service(obj)
        elif res.kind == "Node":
            self.alloc.release_node(obj)

    @staticmethod
    def _check_type(res: Resource, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        kind = body.get("kind")
        api_version = body.get("apiVersion")
        if kind and kind != res.kind:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({res.api_version})" if api_version != res.api_version else
                                     f"kind {kind} does not match the expected kind {res.kind}")
        if api_version and api_version != res.api_version:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({res.api_version})")
        body["kind"] = res.kind
        body["apiVersion"] = res.api_version
        return body

    # -- verbs -----------------------------------------------------------------------------

    def create(self, res: Resource, namespace: str | None, body: Any, dry_run: bool = False) -> dict[str, Any]:
        obj = self._check_type(res, jcopy(body))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if res.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on "
                                         "the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        generated = not meta.get("name") and bool(meta.get("generateName"))
        if generated:
            meta["name"] = self._generate(meta["generateName"])
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if res.kind == "NetworkPolicy":
            meta["generation"] = 1
        # Defaulting and validation depend on the body only: do them before taking the store lock.
        apply_defaults(res.kind, obj)
        self._validate(res, obj)
        key_ns = _ns_key(res, meta.get("namespace"))
        with self.store.lock():
            self._check_namespace(res, meta.get("namespace"))
            for _ in range(100):
                if not generated or self.store.peek(res.kind, key_ns, meta["name"]) is None:
                    break
                meta["name"] = self._generate(meta["generateName"])
            if self.store.peek(res.kind, key_ns, meta["name"]) is not None:
                raise errors.already_exists(res.group, res.plural, meta["name"])
            if dry_run:
                return obj
            self._allocate(res, obj, None)
            return self.store.put(res.kind, obj, "ADDED")

    @staticmethod
    def _generate(prefix: str) -> str:
        return prefix + "".join(random.choice(_NAME_CHARS) for _ in range(5))

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get(res.kind, _ns_key(res, namespace), name)
        if obj is None:
            raise errors.not_found(res.group, res.plural, name)
        return obj

    def list(self, res: Resource, namespace: str | None, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None,
             continue_token: str | None = None) -> dict[str, Any]:
        pred = _filter(res, label_selector, field_selector) if label_selector or field_selector else None
        start: tuple[str, str] | None = None
        tok_rv: int | None = None
        if continue_token:
            try:
                tok = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start = (str(tok["ns"]), str(tok["name"]))
                tok_rv = int(tok["rv"])
            except (ValueError, KeyError, TypeError) as e:
                raise errors.bad_request("continue key is not valid: " + str(e)) from e
        scope = namespace if res.namespaced else None
        if pred is None and limit:
            # no filter: read only this page (and one more object, to know whether there is a next page)
            items, total, rv = self.store.list_page(res.kind, scope, start, limit + 1)
        else:
            items, rv = self.store.list(res.kind, scope, copy_items=False, after=start)
            total = len(items)
        if tok_rv is not None:
            rv = tok_rv
        out: list[dict[str, Any]] = []
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        for i, obj in enumerate(items):
            if pred is not None and not pred(obj):
                continue
            if limit and len(out) >= limit:
                last = out[-1]["metadata"]
                tok = {"rv": rv, "ns": last.get("namespace", ""), "name": last["name"]}
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(tok).encode()).decode()
                if not label_selector and not field_selector:  # as the real server: only without selectors
                    meta["remainingItemCount"] = total - i
                break
            out.append(obj)
        # The items are the store's own dicts: callers serialise them and must not modify them.
        return {"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta, "items": out}

    def list_json(self, res: Resource, namespace: str | None, label_selector: str | None = None,
                  field_selector: str | None = None, limit: int | None = None,
                  continue_token: str | None = None) -> bytes:
        """:meth:`list`, as its compact JSON encoding (what ``json.dumps(list(...), separators=(",", ":"))``
        gives), built from the store's kept encoding of each item rather than by encoding them again."""
        body = self.list(res, namespace, label_selector, field_selector, limit, continue_token)
        items = body.pop("items")
        head = json.dumps(body, separators=(",", ":")).encode()
        return b"".join((head[:-1], b',"items":[', b",".join(self.store.encoded(res.kind, items)), b"]}"))

    def _finish_update(self, res: Resource, old: dict[str, Any], obj: dict[str, Any],
                       subresource: str | None, dry_run: bool) -> dict[str, Any]:
        """Common tail of update and patch: keep immutable metadata, split status, default, validate,
        allocate, store (or delete when the last finalizer went away)."""
        meta = obj.setdefault("metadata", {})
        ometa = old["metadata"]
        if meta.get("name") != ometa["name"]:
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the "
                                     f"URL ({ometa['name']})")
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and str(rv) != ometa["resourceVersion"]:
            raise errors.conflict(res.group, res.plural, ometa["name"],
                                  "the object has been modified; please apply your changes to the latest version "
                                  "and try again")
        meta["resourceVersion"] = ometa["resourceVersion"]
        if meta.get("uid") and meta["uid"] != ometa["uid"]:
            raise errors.conflict(res.group, res.plural, ometa["name"], "Precondition failed: UID in precondition: "
                                  f"{meta['uid']}, UID in object meta: {ometa['uid']}")
        for k in ("uid", "creationTimestamp", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "generation"):
            if k in ometa:
                meta[k] = ometa[k]
            else:
                meta.pop(k, None)
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        if subresource == "status":
            new = jcopy(old)
            new["status"] = obj.get("status", {})
            obj = new
        elif res.kind in STATUS_KINDS:
            if "status" in old:
                obj["status"] = jcopy(old["status"])
            else:
                obj.pop("status", None)
        if res.kind == "Service":
            _drop_type_dependent_fields(obj, old)
        if res.kind == "NetworkPolicy" and obj.get("spec") != old.get("spec"):
            obj["metadata"]["generation"] = int(ometa.get("generation", 1)) + 1
        apply_defaults(res.kind, obj)
        self._validate(res, obj)
        if dry_run:
            return obj
        if obj == old:
            return jcopy(old)  # no-op updates do not bump the resourceVersion
        if ometa.get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            return self._remove(res, old)
        self._allocate(res, obj, old)
        if obj == old:
            return jcopy(old)
        return self.store.put(res.kind, obj, "MODIFIED")

    def update(self, res: Resource, namespace: str | None, name: str, body: Any,
               subresource: str | None = None, dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """PUT. Returns (object, created)."""
        obj = self._check_type(res, jcopy(body))
        with self.store.lock():
            old = self.store.get(res.kind, _ns_key(res, namespace), name)
            if old is None:
                if res.kind == "EndpointSlice" and subresource is None:
                    obj.setdefault("metadata", {})["name"] = name
                    return self.create(res, namespace, obj, dry_run), True
                raise errors.not_found(res.group, res.plural, name)
            obj.setdefault("metadata", {})
            if res.namespaced and obj["metadata"].get("namespace") not in (None, "", namespace):
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on "
                                         "the request")
            return self._finish_update(res, old, obj, subresource, dry_run), False

    def patch(self, res: Resource, namespace: str | None, name: str, content_type: str, body: Any,
              subresource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        fn = PATCH_TYPES.get(content_type)
        if fn is None:
            raise errors.unsupported_media(content_type)
        with self.store.lock():
            old = self.store.get(res.kind, _ns_key(res, namespace), name)
            if old is None:
                raise errors.not_found(res.group, res.plural, name)
            patched = fn(old, body)
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch did not produce an object")
            return self._finish_update(res, old, patched, subresource, dry_run)

    def bind(self, namespace: str | None, name: str, body: Any) -> dict[str, Any]:
        """POST pods/<name>/binding: assign the pod to ``target.name`` (once)."""
        res = BY_KIND["Pod"]
        node = ((body or {}).get("target") or {}).get("name") if isinstance(body, dict) else None
        if not node:
            raise errors.invalid("Binding", "", name, [("target.name", "FieldValueRequired", "Required value")])
        with self.store.lock():
            pod = self.store.get("Pod", namespace or "", name)
            if pod is None:
                raise errors.not_found("", "pods", name)
            current = (pod.get("spec") or {}).get("nodeName")
            if current:
                raise errors.conflict("", "pods/binding", name, f"pod {name} is already assigned to node \"{current}\"")
            pod.setdefault("spec", {})["nodeName"] = node
            self.store.put(res.kind, pod, "MODIFIED")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _remove(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        if res.kind == "Namespace":
            for other in BY_KIND.values():
                if other.namespaced:
                    for o in list(self.store.iter_raw(other.kind)):
                        if o["metadata"].get("namespace") == meta["name"]:
                            self.delete(other, meta["name"], o["metadata"]["name"], {"gracePeriodSeconds": 0},
                                        force=True)
        gone = self.store.delete(res.kind, meta.get("namespace", ""), meta["name"])
        if gone is not None:
            self._release(res, gone)
        return gone or obj

    def delete(self, res: Resource, namespace: str | None, name: str, options: Mapping[str, Any] | None = None,
               dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        """DELETE one object. Returns the response body (the object, or a Success Status)."""
        options = options or {}
        with self.store.lock():
            old = self.store.get(res.kind, _ns_key(res, namespace), name)
            if old is None:
                raise errors.not_found(res.group, res.plural, name)
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise errors.conflict(res.group, res.plural, name, "Precondition failed: UID in precondition: "
                                      f"{pre['uid']}, UID in object meta: {old['metadata']['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise errors.conflict(res.group, res.plural, name, "Precondition failed: ResourceVersion in "
                                      f"precondition: {pre['resourceVersion']}, ResourceVersion in object meta: "
                                      f"{old['metadata']['resourceVersion']}")
            if dry_run:
                result = old
            elif old["metadata"].get("finalizers") and not force:
                if old["metadata"].get("deletionTimestamp"):
                    result = old
                else:
                    obj = jcopy(old)
                    obj["metadata"]["deletionTimestamp"] = now()
                    obj["metadata"]["deletionGracePeriodSeconds"] = int(options.get("gracePeriodSeconds") or 0)
                    result = self.store.put(res.kind, obj, "MODIFIED")
            else:
                result = self._remove(res, old)
        if res.kind in RETURNS_OBJECT:
            return result
        details: dict[str, Any] = {"name": name, "kind": res.plural, "uid": old["metadata"]["uid"]}
        if res.group:
            details["group"] = res.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def delete_collection(self, res: Resource, namespace: str | None, label_selector: str | None,
                          field_selector: str | None, options: Mapping[str, Any] | None = None,
                          dry_run: bool = False) -> dict[str, Any]:
        with self.store.lock():
            lst = self.list(res, namespace, label_selector, field_selector)
            items = []
            for obj in lst["items"]:
                m = obj["metadata"]
                try:
                    self.delete(res, m.get("namespace"), m["name"], options, dry_run)
                except errors.ApiError:
                    continue
                items.append(obj)
        return {"kind": res.list_kind, "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)}, "items": items}

    def matcher(self, res: Resource, namespace: str | None, label_selector: str | None,
                field_selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
        """A predicate for watch filtering (namespace and selectors)."""
        pred = _filter(res, label_selector, field_selector)
        if res.namespaced and namespace:
            return lambda o: (o.get("metadata") or {}).get("namespace") == namespace and pred(o)
        return pred
