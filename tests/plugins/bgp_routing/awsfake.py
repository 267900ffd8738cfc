"""A loopback HTTP server playing the EC2 instance metadata service (IMDSv2) and the EC2 query API.

Every EC2 request is checked as AWS would: the SigV4 signature is recomputed here from the raw request and the
known secret (independently of :mod:`kr_plugins.bgp_routing.aws`), and the Action, InstanceId and
SourceDestCheck.Value parameters are checked. Answers per instance id follow a plan: ``"ok"``,
``"denied"`` (UnauthorizedOperation, 403) or an HTTP status such as ``500``; ``"ok"`` once the plan runs out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCESS_KEY = "AKIDLOOPBACKTEST"
SECRET_KEY = "loopback/secret+KEY"
ROLE = "kr-node-role"
ROLE_KEY, ROLE_SECRET, ROLE_TOKEN = "ASIAROLEKEY", "role/secret", "role-session-token=="
IMDS_TOKEN = "imds-token-123"

_EC2_OK = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ModifyInstanceAttributeResponse '
           b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r-1</requestId><return>true</return>'
           b"</ModifyInstanceAttributeResponse>")


def _error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>r-2</RequestID></Response>").encode()


def _q(s: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(s, safe=safe)


def expected_signature(method: str, path: str, query: str, headers: dict[str, str], signed: list[str], body: bytes,
                       secret: str, scope: str, amz_date: str) -> str:
    """SigV4 as AWS documents it, from the request as received."""
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    creq = "\n".join([
        method, _q(path or "/", "/-_.~"), "&".join(f"{_q(k)}={_q(v)}" for k, v in pairs),
        "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed), ";".join(signed),
        hashlib.sha256(body).hexdigest()])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    date, region, service, _ = scope.split("/")
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()


class FakeAws:
    def __init__(self, region: str = "us-west-2") -> None:
        self.region = region
        self.plan: dict[str, list[Any]] = {}
        self.calls: list[str] = []  # instance ids of signed, well-formed EC2 calls, in order
        self.problems: list[str] = []  # requests AWS would have refused (bad signature, parameters)
        self.imds_hits: Counter[str] = Counter()
        self.proxied = 0  # EC2 requests that came through as a proxy request (absolute URI)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "text/xml") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    fake.imds_hits["token"] += 1
                    return self._send(200, IMDS_TOKEN.encode(), "text/plain")
                self._send(400, b"")

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
                    return self._send(401, b"")
                p = self.path
                fake.imds_hits[p] += 1
                if p == "/latest/meta-data/placement/region":
                    return self._send(200, fake.region.encode(), "text/plain")
                if p == "/latest/meta-data/iam/security-credentials/":
                    return self._send(200, ROLE.encode(), "text/plain")
                if p == f"/latest/meta-data/iam/security-credentials/{ROLE}":
                    exp = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
                    doc = {"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": ROLE_KEY,
                           "SecretAccessKey": ROLE_SECRET, "Token": ROLE_TOKEN, "Expiration": exp}
                    return self._send(200, json.dumps(doc).encode(), "application/json")
                self._send(404, b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                u = urllib.parse.urlsplit(self.path)
                if u.scheme:
                    fake.proxied += 1
                problem = fake.check(self.command, u.path, u.query, {k.lower(): v for k, v in self.headers.items()},
                                     body)
                if problem:
                    with fake._lock:
                        fake.problems.append(problem)
                    return self._send(403, _error("SignatureDoesNotMatch", problem))
                instance = urllib.parse.parse_qs(body.decode())["InstanceId"][0]
                with fake._lock:
                    fake.calls.append(instance)
                    steps = fake.plan.get(instance) or []
                    step = steps.pop(0) if steps else "ok"
                if step == "ok":
                    return self._send(200, _EC2_OK)
                if step == "denied":
                    return self._send(403, _error("UnauthorizedOperation",
                                                  "You are not authorized to perform this operation."))
                self._send(int(step), _error("InternalError", "An internal error has occurred"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def check(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> str:
        """'' when AWS would accept the request, else why not."""
        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return f"no SigV4 Authorization header: {auth!r}"
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        key, scope = fields["Credential"].split("/", 1)
        signed = fields["SignedHeaders"].split(";")
        amz_date = headers.get("x-amz-date", "")
        if {"host", "x-amz-date"} - set(signed):
            return f"host and x-amz-date must be signed: {signed}"
        date, region, service, term = scope.split("/")
        if (region, service, term, date) != (self.region, "ec2", "aws4_request", amz_date[:8]):
            return f"bad credential scope {scope} (date {amz_date})"
        skew = abs(dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC))
        if skew > dt.timedelta(minutes=5):
            return f"request time {amz_date} too far from now"
        secrets = {ACCESS_KEY: (SECRET_KEY, None), ROLE_KEY: (ROLE_SECRET, ROLE_TOKEN)}
        if key not in secrets:
            return f"unknown access key {key}"
        secret, token = secrets[key]
        if token is not None and (headers.get("x-amz-security-token") != token or "x-amz-security-token" not in signed):
            return "role credentials without their (signed) session token"
        want = expected_signature(method, path, query, headers, signed, body, secret, scope, amz_date)
        if not hmac.compare_digest(want, fields["Signature"]):
            return "signature does not match"
        params = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
        flat = {k: v[0] for k, v in params.items() if len(v) == 1}
        if flat.get("Action") != "ModifyInstanceAttribute" or flat.get("SourceDestCheck.Value") != "false" \
                or not flat.get("InstanceId", "").startswith("i-") or set(flat) != set(params) \
                or not flat.get("Version"):
            return f"bad parameters: {params}"
        return ""

    def count(self) -> Counter[str]:
        with self._lock:
            return Counter(self.calls)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
