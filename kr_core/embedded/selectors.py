"""Label selectors (equality and set-based) and field selectors, parsed from query strings."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kr_core.embedded.errors import bad_request

_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")
_KEY = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op in ("=", "in"):
            return has and labels[self.key] in self.values
        if self.op in ("!=", "notin"):
            return not has or labels[self.key] not in self.values
        if self.op == "exists":
            return has
        return not has


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise bad_request(f"unable to parse requirement: {text!r}")
        out.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h`` into requirements (ANDed)."""
    if not text or not text.strip():
        return []
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def need(cond: bool) -> None:
        if not cond:
            raise bad_request(f"unable to parse requirement: found '{toks[i] if i < len(toks) else ''}' in {text!r}")

    while i < len(toks):
        if toks[i] == "!":
            i += 1
            need(i < len(toks) and bool(_KEY.match(toks[i])))
            reqs.append(Requirement(toks[i], "!"))
            i += 1
        else:
            key = toks[i]
            need(bool(_KEY.match(key)))
            i += 1
            if i >= len(toks) or toks[i] == ",":
                reqs.append(Requirement(key, "exists"))
            elif toks[i] in ("=", "==", "!="):
                op = "!=" if toks[i] == "!=" else "="
                i += 1
                val = ""
                if i < len(toks) and toks[i] not in (",", "(", ")"):
                    val = toks[i]
                    i += 1
                reqs.append(Requirement(key, op, frozenset([val])))
            elif toks[i] in ("in", "notin"):
                op = toks[i]
                i += 1
                need(i < len(toks) and toks[i] == "(")
                i += 1
                vals: list[str] = []
                while i < len(toks) and toks[i] != ")":
                    if toks[i] != ",":
                        vals.append(toks[i])
                    i += 1
                need(i < len(toks))
                i += 1
                reqs.append(Requirement(key, op, frozenset(vals)))
            else:
                need(False)
        if i < len(toks):
            need(toks[i] == ",")
            i += 1
    return reqs


def labels_match(reqs: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


def selector_from_map(sel: Mapping[str, str] | None) -> list[Requirement]:
    return [Requirement(k, "=", frozenset([v])) for k, v in (sel or {}).items()]


def _field(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    return cur if isinstance(cur, str) else str(cur)


# Fields each kind accepts in fieldSelector (besides metadata.name and metadata.namespace).
FIELDS: dict[str, set[str]] = {
    "Pod": {"spec.nodeName", "status.phase", "status.podIP", "spec.restartPolicy", "spec.schedulerName",
            "spec.serviceAccountName", "spec.hostNetwork", "status.nominatedNodeName"},
    "Service": {"spec.clusterIP", "spec.type"},
    "Namespace": {"status.phase"},
    "Node": {"spec.unschedulable"},
    "EndpointSlice": {"addressType"},
    "NetworkPolicy": set(),
}


def parse_field_selector(text: str | None, kind: str) -> Callable[[Mapping[str, Any]], bool]:
    """Parse ``metadata.name=x,spec.nodeName!=y`` into a predicate over objects."""
    if not text or not text.strip():
        return lambda _o: True
    checks: list[tuple[str, bool, str]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([^!=]+)(==|=|!=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if field not in ("metadata.name", "metadata.namespace") and field not in FIELDS.get(kind, set()):
            raise bad_request(f'field label not supported: {field}')
        checks.append((field, op == "!=", value))

    def pred(obj: Mapping[str, Any]) -> bool:
        for field, neg, value in checks:
            got = _field(obj, field)
            if field == "spec.hostNetwork" and got == "":
                got = "false"
            if (got == value) == neg:
                return False
        return True

    return pred
