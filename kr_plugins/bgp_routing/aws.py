"""AWS: disable the EC2 source/destination check of the nodes (``--disable-source-dest-check``, default true).

EC2 drops packets whose source or destination is not the instance's own address unless the instance's
``SourceDestCheck`` attribute is off; routed pod traffic needs it off. As kube-router, for every Node whose
``spec.providerID`` is ``aws:///<zone>/<instance-id>``, kr calls EC2 ``ModifyInstanceAttribute`` with
``SourceDestCheck.Value=false`` once, and stops for good when IAM denies it (``UnauthorizedOperation``).

No SDK: requests are signed with AWS Signature Version 4 (:func:`sign_v4`, stdlib ``hmac``/``hashlib``) and
sent with ``urllib`` (which honours ``HTTPS_PROXY``/``NO_PROXY`` for the EC2 API; the instance metadata
service is always reached directly). The standard SDK environment applies:

* credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, else the instance
  role from IMDSv2 (token ``PUT``, then ``iam/security-credentials/<role>``), refreshed before it expires;
* region: from the node's zone (``us-east-1a`` -> ``us-east-1``), else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``,
  else IMDS ``placement/region``;
* endpoints: ``AWS_ENDPOINT_URL_EC2`` (or ``AWS_ENDPOINT_URL``), default ``https://ec2.<region>.amazonaws.com``;
  ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (default ``http://169.254.169.254``); ``AWS_EC2_METADATA_DISABLED=true``.

:class:`SourceDestCheck` does the calls on its own thread (network I/O never runs on the event thread), one
per instance id; a failure is logged against the node and never affects routing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass

log = logging.getLogger("kr.bgp_routing.aws")

EC2_API_VERSION = "2016-11-15"
IMDS_DEFAULT = "http://169.254.169.254"
TIMEOUT = 10.0
_ZONE_RE = re.compile(r"^([a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d+)")
_RETRYABLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError",
                              "Unavailable", "ServiceUnavailable"})


# ---------------------------------------------------------------------------------------------- provider ids
def parse_provider_id(provider_id: str) -> tuple[str, str] | None:
    """``(zone, instance id)`` of an ``aws:///<zone>/<instance-id>`` provider id (zone may be empty), else None."""
    if not provider_id.startswith("aws://"):
        return None
    parts = [p for p in provider_id[len("aws://"):].split("/") if p]
    if not parts or not parts[-1].startswith("i-"):
        return None
    return (parts[-2] if len(parts) >= 2 else ""), parts[-1]


def region_of_zone(zone: str) -> str:
    """The region of an availability zone (``us-east-1a``, local zones ``us-west-2-lax-1a``,
    ``us-gov-west-1b``); ``""`` when it does not look like one."""
    m = _ZONE_RE.match(zone)
    return m.group(1) if m else ""


# ---------------------------------------------------------------------------------------------- SigV4
@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str = ""
    expires: float | None = None  # epoch seconds; None: does not expire (environment)


def _quote(s: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(s, safe=safe)


def canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(pairs))


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def sign_v4(method: str, url: str, headers: dict[str, str], body: bytes, creds: Credentials, region: str,
            service: str, now: dt.datetime | None = None) -> dict[str, str]:
    """The request's headers plus ``Host``, ``X-Amz-Date``, ``X-Amz-Security-Token`` (with a session token)
    and ``Authorization``, signed with AWS Signature Version 4. Every header passed in is signed."""
    now = now or dt.datetime.now(dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    u = urllib.parse.urlsplit(url)
    out = dict(headers)
    if not any(k.lower() == "host" for k in out):
        out["Host"] = u.netloc
    out["X-Amz-Date"] = amz_date
    if creds.token:
        out["X-Amz-Security-Token"] = creds.token
    canon = {k.lower(): " ".join(v.split()) for k, v in out.items()}
    signed = ";".join(sorted(canon))
    canonical_request = "\n".join([
        method.upper(), _quote(u.path or "/", safe="/-_.~"), canonical_query(u.query),
        "".join(f"{k}:{canon[k]}\n" for k in sorted(canon)), signed, hashlib.sha256(body).hexdigest()])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical_request.encode()).hexdigest()])
    sig = hmac.new(signing_key(creds.secret_key, date, region, service), to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, SignedHeaders={signed}, Signature={sig}"
    return out


# ---------------------------------------------------------------------------------------------- errors
class AwsError(Exception):
    """An AWS API or metadata failure. ``code`` is the API error code (``UnauthorizedOperation``), or
    ``HTTP <status>`` / ``network`` / ``metadata``; ``retryable`` says whether trying again may help."""

    def __init__(self, code: str, message: str, *, status: int = 0, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code, self.message, self.status, self.retryable = code, message, status, retryable


def _api_error(status: int, body: bytes) -> AwsError:
    code, message = f"HTTP {status}", ""
    try:
        root = ET.fromstring(body)
        for el in root.iter():
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "Code" and el.text and code.startswith("HTTP"):
                code = el.text.strip()
            elif tag == "Message" and el.text and not message:
                message = el.text.strip()
    except ET.ParseError:
        message = body[:200].decode(errors="replace").strip()
    return AwsError(code, message, status=status, retryable=status >= 500 or status == 429 or code in _RETRYABLE_CODES)


# ---------------------------------------------------------------------------------------------- client
class Ec2Client:
    """Credentials, region and one EC2 call; everything from the standard SDK environment (read when built)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        e = dict(os.environ if env is None else env)
        self.imds = (e.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_DEFAULT).rstrip("/")
        self.imds_disabled = e.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
        self.endpoint = (e.get("AWS_ENDPOINT_URL_EC2") or e.get("AWS_ENDPOINT_URL") or "").rstrip("/")
        self.env_region = e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or ""
        key, secret = e.get("AWS_ACCESS_KEY_ID", ""), e.get("AWS_SECRET_ACCESS_KEY", "")
        self._env_creds = Credentials(key, secret, e.get("AWS_SESSION_TOKEN", "")) if key and secret else None
        self._creds: Credentials | None = None
        self._imds_region = ""
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # IMDS: never via a proxy
        self._api = urllib.request.build_opener()  # EC2: HTTPS_PROXY / NO_PROXY from the environment

    # ------------------------------------------------------------------ IMDSv2
    def _imds_get(self, path: str) -> str:
        if self.imds_disabled:
            raise AwsError("metadata", "AWS_EC2_METADATA_DISABLED is set")
        try:
            req = urllib.request.Request(f"{self.imds}/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            with self._direct.open(req, timeout=TIMEOUT) as r:
                token = r.read().decode()
            req = urllib.request.Request(f"{self.imds}/latest/{path}", headers={"X-aws-ec2-metadata-token": token})
            with self._direct.open(req, timeout=TIMEOUT) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as ex:
            raise AwsError("metadata", f"{path}: HTTP {ex.code}", status=ex.code, retryable=ex.code >= 500) from None
        except (urllib.error.URLError, OSError) as ex:
            raise AwsError("metadata", f"{path}: {getattr(ex, 'reason', ex)}", retryable=True) from None

    def credentials(self) -> Credentials:
        """Environment credentials, else the instance role's (cached until 5 minutes before they expire)."""
        if self._env_creds is not None:
            return self._env_creds
        if self._creds is not None and (self._creds.expires is None or self._creds.expires - 300 > time.time()):
            return self._creds
        roles = self._imds_get("meta-data/iam/security-credentials/").split()
        if not roles:
            raise AwsError("metadata", "no credentials: no AWS_ACCESS_KEY_ID and no instance role")
        try:
            doc = json.loads(self._imds_get(f"meta-data/iam/security-credentials/{roles[0]}"))
        except ValueError:
            raise AwsError("metadata", f"role {roles[0]}: credentials are not JSON", retryable=True) from None
        if doc.get("Code", "Success") != "Success" or not doc.get("AccessKeyId"):
            raise AwsError("metadata", f"role {roles[0]}: {doc.get('Code')} {doc.get('Message', '')}".strip(),
                           retryable=True)
        expires = None
        if doc.get("Expiration"):
            with_tz = doc["Expiration"].replace("Z", "+00:00")
            expires = dt.datetime.fromisoformat(with_tz).timestamp()
        self._creds = Credentials(doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token", ""), expires)
        return self._creds

    def region(self, zone: str = "") -> str:
        r = region_of_zone(zone) or self.env_region or self._imds_region
        if not r:
            self._imds_region = r = self._imds_get("meta-data/placement/region").strip()
        return r

    def endpoint_for(self, region: str) -> str:
        if self.endpoint:
            return self.endpoint
        return f"https://ec2.{region}.amazonaws.com" + (".cn" if region.startswith("cn-") else "")

    # ------------------------------------------------------------------ EC2
    def disable_source_dest_check(self, instance_id: str, zone: str = "") -> None:
        """EC2 ``ModifyInstanceAttribute InstanceId=<id> SourceDestCheck.Value=false``; raises :class:`AwsError`."""
        region = self.region(zone)
        creds = self.credentials()
        url = self.endpoint_for(region) + "/"
        body = urllib.parse.urlencode({"Action": "ModifyInstanceAttribute", "InstanceId": instance_id,
                                       "SourceDestCheck.Value": "false", "Version": EC2_API_VERSION}).encode()
        headers = sign_v4("POST", url, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body,
                          creds, region, "ec2")
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with self._api.open(req, timeout=TIMEOUT) as r:
                r.read()
        except urllib.error.HTTPError as ex:
            raise _api_error(ex.code, ex.read()) from None
        except (urllib.error.URLError, OSError) as ex:
            raise AwsError("network", f"{url}: {getattr(ex, 'reason', ex)}", retryable=True) from None


# ---------------------------------------------------------------------------------------------- worker
class SourceDestCheck:
    """Disables the source/destination check of each AWS node once, on a thread of its own.

    :meth:`submit` is cheap and non-blocking (call it for every node on a full sync and on node events);
    non-AWS provider ids are ignored. A retryable failure (5xx, throttling, network) is retried ``attempts``
    times with exponential backoff, then left for the next :meth:`submit`; ``UnauthorizedOperation`` stops all
    further calls (kube-router: the node's IAM role lacks ``ec2:ModifyInstanceAttribute``).
    """

    def __init__(self, client: Ec2Client | None = None, *, attempts: int = 5, backoff: float = 1.0,
                 spacing: float = 1.0) -> None:
        self.client = client
        self.attempts, self.backoff, self.spacing = attempts, backoff, spacing
        self.done: dict[str, str] = {}  # instance id -> node name
        self.failed: dict[str, str] = {}  # instance id -> last error, until a later submit succeeds
        self.denied = False
        self._pending: set[str] = set()
        self._q: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._lock = threading.Condition()
        self._busy = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def submit(self, node: str, provider_id: str) -> None:
        parsed = parse_provider_id(provider_id)
        if parsed is None:
            return
        zone, instance = parsed
        with self._lock:
            if self.denied or self._stop.is_set() or instance in self.done or instance in self._pending:
                return
            self._pending.add(instance)
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kr-aws-srcdst", daemon=True)
                self._thread.start()
        self._q.put((node, instance, zone))

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted instance was handled (tests, shutdown)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._busy == 0, timeout)

    def stop(self) -> None:
        self._stop.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(2)  # an EC2 call in flight (10 s timeout) is not waited for: daemon thread

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            item = self._q.get()
            if item is None:
                break
            node, instance, zone = item
            try:
                if not (self.denied or self._stop.is_set()):
                    if not first and self.spacing:
                        self._stop.wait(self.spacing)  # kube-router: 1 s between calls against API throttling
                    first = False
                    self._one(node, instance, zone)
            except Exception:  # never let one node end the worker
                log.exception("node %s (EC2 instance %s): disabling the source/destination check failed", node,
                              instance)
            finally:
                with self._lock:
                    self._pending.discard(instance)
                    self._busy -= 1
                    self._lock.notify_all()

    def _one(self, node: str, instance: str, zone: str) -> None:
        if self.client is None:
            self.client = Ec2Client()
        for attempt in range(1, self.attempts + 1):
            try:
                self.client.disable_source_dest_check(instance, zone)
            except AwsError as e:
                if e.code == "UnauthorizedOperation":
                    with self._lock:
                        self.denied = True
                    log.error("node %s (EC2 instance %s): not allowed to disable the source/destination check "
                              "(%s); the instance role needs ec2:ModifyInstanceAttribute. Not trying again for "
                              "any node: disable it some other way or pass --disable-source-dest-check=false",
                              node, instance, e)
                    return
                self.failed[instance] = str(e)
                if not e.retryable or attempt == self.attempts or self._stop.is_set():
                    log.warning("node %s (EC2 instance %s): disabling the source/destination check failed after "
                                "%d attempt(s): %s (tried again at the next full sync)", node, instance, attempt, e)
                    return
                delay = min(self.backoff * 2 ** (attempt - 1), 20.0)
                log.info("node %s (EC2 instance %s): disabling the source/destination check: %s; retrying in "
                         "%.1f s", node, instance, e, delay)
                if self._stop.wait(delay):
                    return
            else:
                self.done[instance] = node
                self.failed.pop(instance, None)
                log.info("node %s (EC2 instance %s): source/destination check disabled", node, instance)
                return
