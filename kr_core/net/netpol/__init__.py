"""The backend-independent part of network policy: the compiled policy model, the desired state of a node,
the deterministic names, and a reachability oracle written from the API's semantics.

* :mod:`.naming`: kube-router's chain and set names (SHA-256 -> base32 -> 16 chars), without the per-sync version;
* :mod:`.model`: :func:`compile_policy` (policy -> :class:`CompiledPolicy`) and :func:`memberships` (pod -> sets);
* :mod:`.desired`: :class:`Desired`, the node's desired sets, named-port groups and local pods, updated per pod;
* :mod:`.oracle`: expected reachability (pod x pod x port x protocol) for tests of any backend.
"""

from . import desired, model, naming, oracle
from .desired import Desired, LocalPod, PodDelta
from .model import CompiledPolicy, Membership, compile_policy, memberships

__all__ = ["CompiledPolicy", "Desired", "LocalPod", "Membership", "PodDelta", "compile_policy", "desired",
           "memberships", "model", "naming", "oracle"]
