"""Decoding of the Kubernetes protobuf wire format for request bodies.

client-go's typed clients (used by ``kubectl create namespace``, ``kubectl create service ...``) send
``application/vnd.kubernetes.protobuf`` and do not fall back to JSON, so the server decodes the types
those generators create. Bodies are ``k8s\\x00`` + runtime.Unknown{typeMeta, raw}; ``raw`` is decoded
with the field numbers of k8s.io/api's generated.proto for the messages below.
"""

from __future__ import annotations

from typing import Any

from kr_core.embedded.errors import ApiError

MAGIC = b"k8s\x00"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """Raw (field number, wire type, value) triples of one message."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 1:
            val, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wt == 5:
            val, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        out.append((num, wt, val))
    return out


# Schema: message name -> {field number: (json name, type, repeated)}; type is "string", "int", "bool",
# "map" (map<string,string>), "intorstr", or the name of another message.
Field = tuple[str, str, bool]
SCHEMAS: dict[str, dict[int, Field]] = {
    "ObjectMeta": {1: ("name", "string", False), 2: ("generateName", "string", False),
                   3: ("namespace", "string", False), 5: ("uid", "string", False),
                   6: ("resourceVersion", "string", False), 11: ("labels", "map", False),
                   12: ("annotations", "map", False), 14: ("finalizers", "string", True)},
    "Namespace": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "NamespaceSpec", False)},
    "NamespaceSpec": {1: ("finalizers", "string", True)},
    "Service": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "ServiceSpec", False)},
    "ServiceSpec": {1: ("ports", "ServicePort", True), 2: ("selector", "map", False), 3: ("clusterIP", "string", False),
                    4: ("type", "string", False), 5: ("externalIPs", "string", True),
                    7: ("sessionAffinity", "string", False), 8: ("loadBalancerIP", "string", False),
                    9: ("loadBalancerSourceRanges", "string", True), 10: ("externalName", "string", False),
                    11: ("externalTrafficPolicy", "string", False), 12: ("healthCheckNodePort", "int", False),
                    13: ("publishNotReadyAddresses", "bool", False), 18: ("clusterIPs", "string", True),
                    19: ("ipFamilies", "string", True), 17: ("ipFamilyPolicy", "string", False),
                    20: ("allocateLoadBalancerNodePorts", "bool", False), 21: ("loadBalancerClass", "string", False),
                    22: ("internalTrafficPolicy", "string", False)},
    "ServicePort": {1: ("name", "string", False), 2: ("protocol", "string", False), 3: ("port", "int", False),
                    4: ("targetPort", "intorstr", False), 5: ("nodePort", "int", False),
                    6: ("appProtocol", "string", False)},
}
KINDS = {"Namespace", "Service"}


def _int32(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def decode(msg: str, buf: bytes) -> dict[str, Any]:
    schema = SCHEMAS[msg]
    out: dict[str, Any] = {}
    for num, _wt, val in fields(buf):
        if num not in schema:
            continue
        name, typ, repeated = schema[num]
        if typ == "string":
            v: Any = val.decode()
        elif typ == "int":
            v = _int32(val)
        elif typ == "bool":
            v = bool(val)
        elif typ == "map":
            kv = {n: x for n, _w, x in fields(val)}
            out.setdefault(name, {})[kv.get(1, b"").decode()] = kv.get(2, b"").decode()
            continue
        elif typ == "intorstr":
            kv = {n: x for n, _w, x in fields(val)}
            v = kv.get(3, b"").decode() if kv.get(1) == 1 else _int32(kv.get(2, 0))
        else:
            v = decode(typ, val)
        if repeated:
            out.setdefault(name, []).append(v)
        elif v not in ("", 0, False) or typ == "intorstr":
            out[name] = v  # proto2 writes zero values; JSON (omitempty) would not
    return out


def decode_body(raw: bytes) -> dict[str, Any]:
    """Decode a ``k8s\\x00``-framed protobuf request body into a JSON-like object."""
    if not raw.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "protobuf body without the k8s magic prefix")
    try:
        unknown = {n: v for n, _w, v in fields(raw[len(MAGIC):])}
        tm = {n: v.decode() for n, _w, v in fields(unknown.get(1, b""))}
        kind, api_version = tm.get(2, ""), tm.get(1, "")
        if kind not in KINDS:
            raise ApiError(415, "UnsupportedMediaType", f"protobuf bodies are supported only for "
                           f"{', '.join(sorted(KINDS))}; send JSON for {kind or 'this object'}")
        obj = decode(kind, unknown.get(2, b""))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "BadRequest", f"cannot decode protobuf body: {e}") from e
    return {"kind": kind, "apiVersion": api_version, **obj}
