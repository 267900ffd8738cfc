"""Validation, as kube-apiserver does it, for the fields kr relies on.

Each validator returns a list of causes ``(field path, reason type, message)``; a non-empty list
becomes a 422 Invalid Status naming the field paths in ``details.causes[].field``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

Cause = tuple[str, str, str]

PROTOCOLS = ("SCTP", "TCP", "UDP")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

INVALID = "FieldValueInvalid"
REQUIRED = "FieldValueRequired"
UNSUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"


def _q(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def invalid(path: str, value: Any, msg: str) -> Cause:
    return (path, INVALID, f"Invalid value: {_q(value)}: {msg}")


def required(path: str, msg: str = "") -> Cause:
    return (path, REQUIRED, "Required value" + (f": {msg}" if msg else ""))


def unsupported(path: str, value: Any, allowed: tuple[str, ...]) -> Cause:
    return (path, UNSUPPORTED, f"Unsupported value: {_q(value)}: supported values: "
            + ", ".join(f'"{a}"' for a in allowed))


def is_port_number(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535


def port_name_ok(v: str) -> bool:
    """IANA_SVC_NAME: at most 15 chars, lowercase alphanumerics and '-', at least one letter, no '--'."""
    return (0 < len(v) <= 15 and bool(PORT_NAME.match(v)) and "--" not in v
            and any(c.isalpha() for c in v))


def parse_cidr(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not isinstance(v, str) or "/" not in v:
        return None
    try:
        return ipaddress.ip_network(v, strict=False)
    except ValueError:
        return None


def parse_ip(v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(v, str):
        return None
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


CIDR_MSG = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
IP_MSG = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
PORT_RANGE_MSG = "must be between 1 and 65535, inclusive"


def validate_metadata(kind: str, obj: dict[str, Any], namespaced: bool) -> list[Cause]:
    causes: list[Cause] = []
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [required("metadata")]
    name = meta.get("name")
    if not name:
        causes.append(required("metadata.name", "name or generateName is required"))
    elif not isinstance(name, str):
        causes.append(invalid("metadata.name", name, "must be a string"))
    else:
        if kind in ("Namespace",) and (not DNS1123_LABEL.match(name) or len(name) > 63):
            causes.append(invalid("metadata.name", name, "a lowercase RFC 1123 label must consist of lower case "
                                  "alphanumeric characters or '-', and must start and end with an alphanumeric character"))
        elif kind == "Service" and (not DNS1035_LABEL.match(name) or len(name) > 63):
            causes.append(invalid("metadata.name", name, "a DNS-1035 label must consist of lower case alphanumeric "
                                  "characters or '-', start with an alphabetic character, and end with an alphanumeric character"))
        elif not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            causes.append(invalid("metadata.name", name, "a lowercase RFC 1123 subdomain must consist of lower case "
                                  "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"))
    if namespaced and not meta.get("namespace"):
        causes.append(required("metadata.namespace"))
    for field in ("labels", "annotations"):
        val = meta.get(field)
        if val is None:
            continue
        if not isinstance(val, dict):
            causes.append(invalid(f"metadata.{field}", val, "must be a map of strings"))
            continue
        for k, v in val.items():
            key_name = k.rsplit("/", 1)[-1]
            if not QUALIFIED_NAME.match(key_name) or len(key_name) > 63:
                causes.append(invalid(f"metadata.{field}", k, "name part must consist of alphanumeric characters, "
                                      "'-', '_' or '.', and must start and end with an alphanumeric character"))
            if not isinstance(v, str):
                causes.append(invalid(f"metadata.{field}.{k}", v, "must be a string"))
            elif field == "labels" and (len(v) > 63 or not LABEL_VALUE.match(v)):
                causes.append(invalid("metadata.labels", v, "a valid label must be an empty string or consist of "
                                      "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                      "alphanumeric character"))
    return causes


def _validate_protocol(path: str, proto: Any, causes: list[Cause]) -> None:
    if proto not in PROTOCOLS:
        causes.append(unsupported(path, proto, PROTOCOLS))


def _validate_np_port(path: str, p: Any, causes: list[Cause]) -> None:
    if not isinstance(p, dict):
        causes.append(invalid(path, p, "must be an object"))
        return
    if "protocol" in p:
        _validate_protocol(f"{path}.protocol", p["protocol"], causes)
    port = p.get("port")
    if port is not None:
        if isinstance(port, str):
            if port.isdigit():
                port = int(port)
            elif not port_name_ok(port):
                causes.append(invalid(f"{path}.port", port, "must contain only alpha-numeric characters (a-z, 0-9), "
                                      "and hyphens (-), at most 15 characters, at least one letter"))
        if isinstance(port, int) and not is_port_number(port):
            causes.append(invalid(f"{path}.port", port, PORT_RANGE_MSG))
    end = p.get("endPort")
    if end is not None:
        if port is None or isinstance(port, str):
            causes.append(invalid(f"{path}.endPort", end, "may not be specified when `port` is non-numeric"))
        elif not is_port_number(end):
            causes.append(invalid(f"{path}.endPort", end, PORT_RANGE_MSG))
        elif isinstance(port, int) and end < port:
            causes.append(invalid(f"{path}.endPort", end, "must be greater than or equal to `port`"))


OPERATORS = ("DoesNotExist", "Exists", "In", "NotIn")


def validate_label_selector(path: str, sel: Any, causes: list[Cause]) -> None:
    """A metav1.LabelSelector: matchLabels values and matchExpressions operators/values."""
    if sel is None:
        return
    if not isinstance(sel, dict):
        causes.append(invalid(path, sel, "must be an object"))
        return
    for k, v in (sel.get("matchLabels") or {}).items():
        if not isinstance(v, str) or len(v) > 63 or not LABEL_VALUE.match(v):
            causes.append(invalid(f"{path}.matchLabels", v, "a valid label must be an empty string or consist of "
                                  "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                  "alphanumeric character"))
        if not QUALIFIED_NAME.match(str(k).rsplit("/", 1)[-1]):
            causes.append(invalid(f"{path}.matchLabels", k, "name part must consist of alphanumeric characters, "
                                  "'-', '_' or '.', and must start and end with an alphanumeric character"))
    for i, e in enumerate(sel.get("matchExpressions") or []):
        epath = f"{path}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            causes.append(invalid(epath, e, "must be an object"))
            continue
        if not e.get("key"):
            causes.append(required(f"{epath}.key"))
        op, values = e.get("operator"), e.get("values") or []
        if op not in OPERATORS:
            causes.append(invalid(f"{epath}.operator", op, "not a valid selector operator"))
        elif op in ("In", "NotIn") and not values:
            causes.append(required(f"{epath}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist") and values:
            causes.append((f"{epath}.values", FORBIDDEN, "Forbidden: may not be specified when `operator` is "
                           "'Exists' or 'DoesNotExist'"))


def _validate_peer(path: str, peer: Any, causes: list[Cause]) -> None:
    if not isinstance(peer, dict):
        causes.append(invalid(path, peer, "must be an object"))
        return
    ipb = peer.get("ipBlock")
    selectors = [k for k in ("podSelector", "namespaceSelector") if peer.get(k) is not None]
    if ipb is None and not selectors:
        causes.append(required(path, "must specify a peer"))
    if ipb is not None and selectors:
        causes.append((path, FORBIDDEN, "Forbidden: may not specify both ipBlock and another peer"))
    for k in selectors:
        validate_label_selector(f"{path}.{k}", peer[k], causes)
    if ipb is None:
        return
    if not isinstance(ipb, dict):
        causes.append(invalid(f"{path}.ipBlock", ipb, "must be an object"))
        return
    cidr_s = ipb.get("cidr")
    cidr = parse_cidr(cidr_s)
    if not cidr_s:
        causes.append(required(f"{path}.ipBlock.cidr"))
    elif cidr is None:
        causes.append(invalid(f"{path}.ipBlock.cidr", cidr_s, CIDR_MSG))
    for k, ex_s in enumerate(ipb.get("except") or []):
        ex = parse_cidr(ex_s)
        epath = f"{path}.ipBlock.except[{k}]"
        if ex is None:
            causes.append(invalid(epath, ex_s, CIDR_MSG))
        elif cidr is not None and (ex.version != cidr.version or not ex.subnet_of(cidr)  # type: ignore[arg-type]
                                   or ex.prefixlen <= cidr.prefixlen):
            causes.append(invalid(epath, ex_s, "must be a strict subset of `cidr`"))


def validate_network_policy(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    validate_label_selector("spec.podSelector", spec.get("podSelector"), causes)
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        rules = spec.get(direction)
        if rules is None:
            continue
        if not isinstance(rules, list):
            causes.append(invalid(f"spec.{direction}", rules, "must be a list"))
            continue
        for i, rule in enumerate(rules):
            rpath = f"spec.{direction}[{i}]"
            if not isinstance(rule, dict):
                causes.append(invalid(rpath, rule, "must be an object"))
                continue
            for j, p in enumerate(rule.get("ports") or []):
                _validate_np_port(f"{rpath}.ports[{j}]", p, causes)
            for j, peer in enumerate(rule.get(peers_key) or []):
                _validate_peer(f"{rpath}.{peers_key}[{j}]", peer, causes)
    for i, t in enumerate(spec.get("policyTypes") or []):
        if t not in ("Ingress", "Egress"):
            causes.append(unsupported(f"spec.policyTypes[{i}]", t, ("Egress", "Ingress")))
    return causes


SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")


def validate_service(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    typ = spec.get("type", "ClusterIP")
    if typ not in SERVICE_TYPES:
        causes.append(unsupported("spec.type", typ, SERVICE_TYPES))
    ports = spec.get("ports")
    if typ == "ExternalName":
        if not spec.get("externalName"):
            causes.append(required("spec.externalName"))
    elif not ports and spec.get("clusterIP") != "None":
        causes.append(required("spec.ports"))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, p in enumerate(ports or []):
        path = f"spec.ports[{i}]"
        if not isinstance(p, dict):
            causes.append(invalid(path, p, "must be an object"))
            continue
        name = p.get("name", "")
        if len(ports) > 1 and not name:
            causes.append(required(f"{path}.name"))
        elif name:
            if not DNS1123_LABEL.match(str(name)) or len(str(name)) > 63:
                causes.append(invalid(f"{path}.name", name, "a lowercase RFC 1123 label must consist of lower case "
                                      "alphanumeric characters or '-'"))
            if name in names:
                causes.append((f"{path}.name", DUPLICATE, f"Duplicate value: {_q(name)}"))
            names.add(name)
        port = p.get("port")
        if port is None:
            causes.append(required(f"{path}.port"))
        elif not is_port_number(port):
            causes.append(invalid(f"{path}.port", port, PORT_RANGE_MSG))
        _validate_protocol(f"{path}.protocol", p.get("protocol", "TCP"), causes)
        if (port, p.get("protocol", "TCP")) in seen:
            causes.append((f"{path}", DUPLICATE, f"Duplicate value: {{\"port\":{port},\"protocol\":\"{p.get('protocol', 'TCP')}\"}}"))
        seen.add((port, p.get("protocol", "TCP")))
        tp = p.get("targetPort")
        if isinstance(tp, str) and not tp.isdigit():
            if not port_name_ok(tp):
                causes.append(invalid(f"{path}.targetPort", tp, "must contain only alpha-numeric characters (a-z, 0-9), "
                                      "and hyphens (-), at most 15 characters, at least one letter"))
        elif tp is not None and not is_port_number(int(tp) if isinstance(tp, str) else tp):
            causes.append(invalid(f"{path}.targetPort", tp, PORT_RANGE_MSG))
        np = p.get("nodePort")
        if np not in (None, 0):
            if typ not in ("NodePort", "LoadBalancer"):
                causes.append((f"{path}.nodePort", FORBIDDEN, "Forbidden: may not be used when `type` is 'ClusterIP'"))
            elif not is_port_number(np):
                causes.append(invalid(f"{path}.nodePort", np, PORT_RANGE_MSG))
    cips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if spec.get("clusterIP") and spec.get("clusterIPs") and spec["clusterIPs"][0] != spec["clusterIP"]:
        causes.append(invalid("spec.clusterIPs", spec["clusterIPs"], "must match `clusterIP` as clusterIPs[0]"))
    for i, ip in enumerate(cips):
        if ip == "None" and i == 0:
            continue
        if parse_ip(ip) is None:
            causes.append(invalid(f"spec.clusterIPs[{i}]", ip, IP_MSG))
    if len(cips) > 2:
        causes.append(invalid("spec.clusterIPs", cips, "may specify no more than one IP for each IP family"))
    sa = spec.get("sessionAffinity")
    if sa is not None and sa not in ("ClientIP", "None"):
        causes.append(unsupported("spec.sessionAffinity", sa, ("ClientIP", "None")))
    etp = spec.get("externalTrafficPolicy")
    if etp is not None and etp not in ("Cluster", "Local"):
        causes.append(unsupported("spec.externalTrafficPolicy", etp, ("Cluster", "Local")))
    if etp and typ not in ("NodePort", "LoadBalancer") and not spec.get("externalIPs"):
        causes.append(invalid("spec.externalTrafficPolicy", etp,
                              "may only be set when `type` is 'NodePort' or 'LoadBalancer'"))
    itp = spec.get("internalTrafficPolicy")
    if itp is not None and itp not in ("Cluster", "Local"):
        causes.append(unsupported("spec.internalTrafficPolicy", itp, ("Cluster", "Local")))
    for i, fam in enumerate(spec.get("ipFamilies") or []):
        if fam not in ("IPv4", "IPv6"):
            causes.append(unsupported(f"spec.ipFamilies[{i}]", fam, ("IPv4", "IPv6")))
    pol = spec.get("ipFamilyPolicy")
    if pol is not None and pol not in ("SingleStack", "PreferDualStack", "RequireDualStack"):
        causes.append(unsupported("spec.ipFamilyPolicy", pol, ("PreferDualStack", "RequireDualStack", "SingleStack")))
    for i, ip in enumerate(spec.get("externalIPs") or []):
        if parse_ip(ip) is None:
            causes.append(invalid(f"spec.externalIPs[{i}]", ip, IP_MSG))
    for i, c in enumerate(spec.get("loadBalancerSourceRanges") or []):
        if parse_cidr(c) is None:
            causes.append(invalid(f"spec.loadBalancerSourceRanges[{i}]", c, CIDR_MSG))
    return causes


def validate_pod(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    containers = spec.get("containers")
    if not containers:
        causes.append(required("spec.containers"))
    names: set[str] = set()
    for i, c in enumerate(containers or []):
        path = f"spec.containers[{i}]"
        if not isinstance(c, dict):
            causes.append(invalid(path, c, "must be an object"))
            continue
        if not c.get("name"):
            causes.append(required(f"{path}.name"))
        elif c["name"] in names:
            causes.append((f"{path}.name", DUPLICATE, f"Duplicate value: {_q(c['name'])}"))
        names.add(c.get("name", ""))
        for j, p in enumerate(c.get("ports") or []):
            ppath = f"{path}.ports[{j}]"
            if not is_port_number(p.get("containerPort")):
                causes.append(invalid(f"{ppath}.containerPort", p.get("containerPort"), PORT_RANGE_MSG))
            _validate_protocol(f"{ppath}.protocol", p.get("protocol", "TCP"), causes)
            if p.get("name") and not port_name_ok(p["name"]):
                causes.append(invalid(f"{ppath}.name", p["name"], "must be no more than 15 characters"))
    status = obj.get("status") or {}
    if status.get("podIP") and parse_ip(status["podIP"]) is None:
        causes.append(invalid("status.podIP", status["podIP"], IP_MSG))
    for i, ip in enumerate(status.get("podIPs") or []):
        if parse_ip((ip or {}).get("ip")) is None:
            causes.append(invalid(f"status.podIPs[{i}].ip", (ip or {}).get("ip"), IP_MSG))
    return causes


def validate_node(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec") or {}
    if spec.get("podCIDR") and parse_cidr(spec["podCIDR"]) is None:
        causes.append(invalid("spec.podCIDR", spec["podCIDR"], CIDR_MSG))
    for i, c in enumerate(spec.get("podCIDRs") or []):
        if parse_cidr(c) is None:
            causes.append(invalid(f"spec.podCIDRs[{i}]", c, CIDR_MSG))
    for i, a in enumerate((obj.get("status") or {}).get("addresses") or []):
        if not isinstance(a, dict) or not a.get("type"):
            causes.append(required(f"status.addresses[{i}].type"))
    return causes


ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


def validate_endpoint_slice(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    at = obj.get("addressType")
    if at not in ADDRESS_TYPES:
        causes.append(unsupported("addressType", at, ADDRESS_TYPES) if at else required("addressType"))
    eps = obj.get("endpoints") or []
    if len(eps) > 1000:
        causes.append(("endpoints", "FieldValueTooMany", f"Too many: {len(eps)}: must have at most 1000 items"))
    for i, ep in enumerate(eps):
        addrs = (ep or {}).get("addresses") or []
        if not addrs:
            causes.append(required(f"endpoints[{i}].addresses"))
        for j, a in enumerate(addrs):
            ip = parse_ip(a)
            if at == "IPv4" and (ip is None or ip.version != 4):
                causes.append(invalid(f"endpoints[{i}].addresses[{j}]", a, "must be a valid IPv4 address"))
            elif at == "IPv6" and (ip is None or ip.version != 6):
                causes.append(invalid(f"endpoints[{i}].addresses[{j}]", a, "must be a valid IPv6 address"))
    for i, p in enumerate(obj.get("ports") or []):
        if p.get("port") is not None and not is_port_number(p["port"]):
            causes.append(invalid(f"ports[{i}].port", p["port"], PORT_RANGE_MSG))
        if p.get("protocol") is not None:
            _validate_protocol(f"ports[{i}].protocol", p["protocol"], causes)
    return causes


VALIDATORS: dict[str, Callable[[dict[str, Any]], list[Cause]]] = {
    "NetworkPolicy": validate_network_policy,
    "Service": validate_service,
    "Pod": validate_pod,
    "Node": validate_node,
    "EndpointSlice": validate_endpoint_slice,
}


def validate(kind: str, obj: dict[str, Any], namespaced: bool) -> list[Cause]:
    causes = validate_metadata(kind, obj, namespaced)
    fn = VALIDATORS.get(kind)
    if fn is not None:
        causes.extend(fn(obj))
    return causes
