"""A lab's names, addresses and state file.

Everything a lab creates is recorded in ``<state dir>/state.json`` *before* it is created (namespaces,
processes with their start times, files), so ``kr lab down`` can remove it all after a crash, a
``kill -9`` of ``kr lab up`` or of any lab process. The state directory is ``/run/kr-lab/<name>/``
(``$KR_LAB_ROOT`` overrides ``/run/kr-lab``).

Names: a lab name is 1-10 lowercase letters/digits (no dash, so one lab's namespace names never look like
another's); namespaces are ``<name>-cp``, ``<name>-sw``, ``<name>-ext``, ``<name>-node-<i>`` and pods
``<name>-p-<8 hex>``. Each running lab gets an index ``i`` (the lowest free one) that picks its
address ranges: lab network 192.168.(100+i).0/24 (fd00:(100+i)::/64), cluster CIDR 10.(244+i).0.0/16
(fd00:10:(244+i)::/56), service CIDR 10.(96+i).0.0/16 (fd00:10:(96+i)::/112); the numbers
in the IPv6 ranges are written in decimal digits (fd00:10:244::/56 for lab 0).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_NAME = "kr"
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
MAX_LABS = 12
APISERVER_PORT = 6443
HEALTH_PORT = 20244


def lab_root() -> Path:
    return Path(os.environ.get("KR_LAB_ROOT", "/run/kr-lab"))


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"lab name {name!r}: use 1-10 lowercase letters and digits, starting with a letter")
    return name


def state_dir(name: str) -> Path:
    return lab_root() / check_name(name)


def pod_netns(lab: str, key: str) -> str:
    """The netns of pod ``key`` (``namespace/name/uid``): ``<lab>-p-<8 hex>``."""
    import hashlib

    return f"{lab}-p-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def lab_netns_re(lab: str) -> re.Pattern[str]:
    """Every netns name lab ``lab`` may have created."""
    return re.compile(rf"^{re.escape(lab)}-(cp|sw|ext|node-\d+|p-[0-9a-f]{{8}})$")


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    try:
        if rest[0] == "Z":
            return None
        return int(rest[19])
    except (IndexError, ValueError):
        return None


@dataclass
class Proc:
    """A process the lab started."""

    role: str  # apiserver, proxy, scheduler, kubelet, agent
    pid: int
    start: int | None
    netns: str | None = None
    node: str | None = None
    log: str | None = None
    argv: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        st = proc_start_time(self.pid)
        return st is not None and (self.start is None or st == self.start)

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        return True


@dataclass
class NodeInfo:
    name: str
    netns: str
    ip4: str
    ip6: str | None = None
    pod_cidrs: list[str] = field(default_factory=list)


@dataclass
class LabState:
    name: str
    index: int
    ipv6: bool = False
    static_routes: bool = False
    plugins: list[str] | None = None
    config: str | None = None
    phase: str = "starting"  # starting, up, stopping
    created: float = field(default_factory=time.time)
    net4: str = ""
    net6: str | None = None
    cluster_cidr: str = ""
    service_cidr: str = ""
    cp_ip4: str = ""
    cp_ip6: str | None = None
    ext_ip4: str = ""
    ext_ip6: str | None = None
    apiserver_port: int = APISERVER_PORT
    host_port: int | None = None
    nodes: list[NodeInfo] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    processes: list[Proc] = field(default_factory=list)

    # -- names -----------------------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return state_dir(self.name)

    @property
    def file(self) -> Path:
        return self.dir / "state.json"

    def ns(self, what: str) -> str:
        """The netns name for ``cp``, ``sw``, ``ext`` or ``node-N``."""
        return f"{self.name}-{what}"

    @property
    def kubeconfig(self) -> Path:
        """The host-side kubeconfig (through the loopback proxy)."""
        return self.dir / "kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        """The kubeconfig used inside the lab network (node agents, kubelets, scheduler)."""
        return self.dir / "kubeconfig.lab"

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"lab {self.name} has no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def procs(self, role: str | None = None, node: str | None = None) -> list[Proc]:
        return [p for p in self.processes if (role is None or p.role == role) and (node is None or p.node == node)]

    # -- persistence -----------------------------------------------------------------------------------

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, self.file)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        data = dict(data)
        data["nodes"] = [NodeInfo(**n) for n in data.get("nodes", [])]
        data["processes"] = [Proc(**p) for p in data.get("processes", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, name: str) -> LabState | None:
        try:
            return cls.from_json(json.loads((state_dir(name) / "state.json").read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None


def existing_labs() -> list[str]:
    root = lab_root()
    try:
        return sorted(d.name for d in root.iterdir() if d.is_dir() and NAME_RE.match(d.name))
    except FileNotFoundError:
        return []


def free_index(name: str) -> int:
    """The lowest index no other lab of this machine uses."""
    used = set()
    for other in existing_labs():
        if other == name:
            continue
        st = LabState.load(other)
        if st is not None:
            used.add(st.index)
    for i in range(MAX_LABS):
        if i not in used:
            return i
    raise RuntimeError(
        f"too many labs on this machine ({MAX_LABS}); `kr lab down --name NAME` one of: {', '.join(existing_labs())}"
    )


def plan(name: str, index: int, nodes: int, ipv6: bool) -> LabState:
    """Addresses for lab ``name`` with ``nodes`` nodes (node objects get their pod CIDRs later)."""
    if not 1 <= nodes <= 50:
        raise ValueError("--nodes must be between 1 and 50")
    net4 = ipaddress.ip_network(f"192.168.{100 + index}.0/24")
    net6 = ipaddress.ip_network(f"fd00:{100 + index}::/64") if ipv6 else None

    def at(net: Any, host: int) -> str | None:
        return str(net.network_address + host) if net is not None else None

    st = LabState(name=name, index=index, ipv6=ipv6)
    st.net4 = str(net4)
    st.net6 = str(net6) if net6 else None
    st.cluster_cidr = f"10.{244 + index}.0.0/16" + (f",fd00:10:{244 + index}::/56" if ipv6 else "")
    st.service_cidr = f"10.{96 + index}.0.0/16" + (f",fd00:10:{96 + index}::/112" if ipv6 else "")
    st.cp_ip4, st.cp_ip6 = str(at(net4, 2)), at(net6, 2)
    st.ext_ip4, st.ext_ip6 = str(at(net4, 254)), at(net6, 0xFE)
    for i in range(1, nodes + 1):
        st.nodes.append(
            NodeInfo(name=f"node-{i}", netns=f"{name}-node-{i}", ip4=str(at(net4, 10 + i)), ip6=at(net6, 0x10 + i))
        )
    return st
