"""--disable-source-dest-check: SigV4 against AWS's published vectors, and the EC2/IMDSv2 client and its worker
against a loopback server (:mod:`.awsfake`) that verifies every signature."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import pytest

from kr_plugins.bgp_routing.aws import (
    Credentials,
    Ec2Client,
    SourceDestCheck,
    parse_provider_id,
    region_of_zone,
    sign_v4,
)

from .awsfake import ACCESS_KEY, ROLE_KEY, SECRET_KEY, FakeAws

EXAMPLE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
WHEN = dt.datetime(2015, 8, 30, 12, 36, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("method", "url", "headers", "service", "signed", "signature"), [
    # AWS's SigV4 test suite (aws-sig-v4-test-suite / aws-c-auth v4): get-vanilla, post-vanilla
    ("GET", "https://example.amazonaws.com/", {}, "service", "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("POST", "https://example.amazonaws.com/", {}, "service", "host;x-amz-date",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    # the worked example of AWS's "Signature Version 4 signing process" documentation (IAM ListUsers)
    ("GET", "https://iam.amazonaws.com/?Version=2010-05-08&Action=ListUsers",
     {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, "iam", "content-type;host;x-amz-date",
     "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"),
])
def test_sigv4_known_answers(method: str, url: str, headers: dict[str, str], service: str, signed: str,
                             signature: str) -> None:
    out = sign_v4(method, url, headers, b"", EXAMPLE, "us-east-1", service, WHEN)
    assert out["X-Amz-Date"] == "20150830T123600Z"
    assert out["Authorization"] == (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/{service}/"
                                    f"aws4_request, SignedHeaders={signed}, Signature={signature}")


def test_session_token_is_sent_and_signed() -> None:
    out = sign_v4("GET", "https://example.amazonaws.com/", {}, b"",
                  Credentials(EXAMPLE.access_key, EXAMPLE.secret_key, "TOKEN"), "us-east-1", "service", WHEN)
    assert out["X-Amz-Security-Token"] == "TOKEN"
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in out["Authorization"]


def test_provider_ids_and_regions() -> None:
    assert parse_provider_id("aws:///us-east-1a/i-0abc") == ("us-east-1a", "i-0abc")
    assert parse_provider_id("aws:////i-0abc") == ("", "i-0abc")
    assert parse_provider_id("aws:///i-0abc") == ("", "i-0abc")
    for other in ("", "gce://proj/us-central1-a/n1", "azure:///subscriptions/x", "aws:///us-east-1a/",
                  "kind://docker/kind/n"):
        assert parse_provider_id(other) is None, other
    assert region_of_zone("us-east-1a") == "us-east-1"
    assert region_of_zone("us-west-2-lax-1a") == "us-west-2"
    assert region_of_zone("us-gov-west-1b") == "us-gov-west-1"
    assert region_of_zone("eu-central-1c") == "eu-central-1"
    assert region_of_zone("cn-north-1a") == "cn-north-1"
    assert region_of_zone("") == "" and region_of_zone("nowhere") == ""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAws]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    f = FakeAws()
    yield f
    f.close()
    assert not f.problems, f.problems


def env_creds(fake: FakeAws, **extra: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL_EC2": fake.url,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": fake.url, **extra}


def worker(env: dict[str, str]) -> SourceDestCheck:
    return SourceDestCheck(Ec2Client(env), attempts=3, backoff=0.01, spacing=0)


NODES = [("node-a", "aws:///us-west-2a/i-0000000a"), ("node-b", "aws:///us-west-2b/i-0000000b"),
         ("node-gce", "gce://proj/us-central1-a/node-gce"), ("node-bare", "")]


def test_each_aws_node_once_none_for_others(fake: FakeAws, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "kr.bgp_routing.aws")
    w = worker(env_creds(fake))
    try:
        for _ in range(3):  # full syncs and node events repeat
            for name, pid in NODES:
                w.submit(name, pid)
            assert w.wait_idle(10)
        assert fake.count() == {"i-0000000a": 1, "i-0000000b": 1}
        assert w.done == {"i-0000000a": "node-a", "i-0000000b": "node-b"}
        # a node added later
        w.submit("node-c", "aws:///us-west-2c/i-0000000c")
        assert w.wait_idle(10)
        assert fake.count()["i-0000000c"] == 1 and len(fake.calls) == 3
        assert "node node-c (EC2 instance i-0000000c): source/destination check disabled" in caplog.text
        assert not fake.imds_hits  # region from the zone, credentials from the environment: no IMDS
    finally:
        w.stop()


def test_instance_role_credentials_and_region_from_imdsv2(fake: FakeAws) -> None:
    env = {"AWS_ENDPOINT_URL_EC2": fake.url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": fake.url}
    w = worker(env)
    try:
        w.submit("node-a", "aws:////i-0000000a")  # no zone: region from IMDS
        w.submit("node-b", "aws:////i-0000000b")
        assert w.wait_idle(10)
        assert fake.count() == {"i-0000000a": 1, "i-0000000b": 1}
        assert w.client is not None and w.client.credentials().access_key == ROLE_KEY
        # the role's credentials and the region were fetched once and cached (each IMDS read takes a token)
        assert fake.imds_hits["/latest/meta-data/iam/security-credentials/kr-node-role"] == 1
        assert fake.imds_hits["/latest/meta-data/placement/region"] == 1
    finally:
        w.stop()


def test_iam_denial_stops_all_retries_and_names_the_node(fake: FakeAws, caplog: pytest.LogCaptureFixture) -> None:
    fake.plan["i-0000000a"] = ["denied"]
    w = worker(env_creds(fake))
    try:
        for name, pid in NODES:
            w.submit(name, pid)
        assert w.wait_idle(10)
        assert fake.calls == ["i-0000000a"]  # one call, not retried; node-b never tried
        assert w.denied and not w.done
        err = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(err) == 1 and "node node-a (EC2 instance i-0000000a)" in err[0].getMessage()
        assert "UnauthorizedOperation" in err[0].getMessage()
        for name, pid in NODES + [("node-c", "aws:///us-west-2c/i-0000000c")]:  # later syncs and nodes
            w.submit(name, pid)
        assert w.wait_idle(10)
        assert fake.calls == ["i-0000000a"]
    finally:
        w.stop()


def test_server_error_is_retried(fake: FakeAws, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "kr.bgp_routing.aws")
    fake.plan["i-0000000a"] = [500, 503]
    w = worker(env_creds(fake))
    try:
        w.submit("node-a", "aws:///us-west-2a/i-0000000a")
        assert w.wait_idle(10)
        assert fake.count() == {"i-0000000a": 3} and w.done == {"i-0000000a": "node-a"}
        assert "node node-a (EC2 instance i-0000000a): disabling the source/destination check: InternalError" \
            in caplog.text
        # attempts used up: left for the next sync, which succeeds
        fake.plan["i-0000000b"] = [500, 500, 500]
        w.submit("node-b", "aws:///us-west-2b/i-0000000b")
        assert w.wait_idle(10)
        assert fake.count()["i-0000000b"] == 3 and "i-0000000b" not in w.done and not w.denied
        assert "failed after 3 attempt(s)" in caplog.text
        w.submit("node-b", "aws:///us-west-2b/i-0000000b")
        assert w.wait_idle(10)
        assert fake.count()["i-0000000b"] == 4 and w.done["i-0000000b"] == "node-b"
    finally:
        w.stop()


def test_ec2_requests_go_through_the_proxy_of_the_environment(fake: FakeAws,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The EC2 endpoint is reached through ``HTTP_PROXY`` (here the fake itself, answering proxy requests);
    the signature covers the endpoint's own Host. IMDS is never proxied."""
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    monkeypatch.setenv("http_proxy", fake.url)
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_ENDPOINT_URL_EC2": "http://ec2.us-west-2.test.invalid"}
    w = worker(env)
    try:
        w.submit("node-a", "aws:///us-west-2a/i-0000000a")
        assert w.wait_idle(10)
        assert fake.count() == {"i-0000000a": 1} and fake.proxied == 1
    finally:
        w.stop()


def test_unreachable_endpoint_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:9"}  # discard port: connection refused
    w = worker(env)
    try:
        w.submit("node-a", "aws:///us-west-2a/i-0000000a")
        assert w.wait_idle(10)
        assert not w.done and "network" in w.failed["i-0000000a"]
        assert "node node-a (EC2 instance i-0000000a)" in caplog.text
    finally:
        w.stop()


def test_the_fake_refuses_a_wrong_signature(fake: FakeAws) -> None:
    """The server-side check is real: a wrong secret is refused (SignatureDoesNotMatch, not retried)."""
    w = worker(env_creds(fake, AWS_SECRET_ACCESS_KEY="not-the-secret"))
    try:
        w.submit("node-a", "aws:///us-west-2a/i-0000000a")
        assert w.wait_idle(10)
        assert fake.problems == ["signature does not match"] and not fake.calls
        assert "SignatureDoesNotMatch" in w.failed["i-0000000a"] and not w.denied
    finally:
        w.stop()
        fake.problems.clear()


@pytest.mark.root
def test_plugin_disables_the_check_of_aws_nodes_once(netlab_factory, fake: FakeAws,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The bgp_routing plugin in an agent: every AWS node once (those at start and one added later), none for
    the others, routing unaffected; an agent with --disable-source-dest-check=false makes no call."""
    from kr_core.model import Node

    from .netlab import wait_for

    for k, v in env_creds(fake).items():
        monkeypatch.setenv(k, v)
    lab = netlab_factory(2)
    n1, n2 = lab.nodes
    n1.provider_id, n2.provider_id = "aws:///us-west-2a/i-0000000a", "aws:///us-west-2b/i-0000000b"
    gce = Node.from_json({"metadata": {"name": "node-gce"}, "spec": {"providerID": "gce://p/us-central1-a/node-gce"},
                          "status": {"addresses": [{"type": "InternalIP", "address": "192.168.100.50"}]}})
    lab.start_agent(n1, [gce])
    wait_for(lambda: fake.count() == {"i-0000000a": 1, "i-0000000b": 1}, 20, "one call per AWS node")
    late = Node.from_json({"metadata": {"name": "node-c"}, "spec": {"providerID": "aws:///us-west-2c/i-0000000c"},
                           "status": {"addresses": [{"type": "InternalIP", "address": "192.168.100.60"}]}})
    assert n1.feed is not None
    n1.feed.update(late)
    wait_for(lambda: fake.count()["i-0000000c"] == 1, 20, "the node added later")
    srcdst = n1.plugin().srcdst
    assert srcdst is not None and srcdst.wait_idle(10)
    assert srcdst.done == {"i-0000000a": "node-1", "i-0000000b": "node-2", "i-0000000c": "node-c"}

    lab.start_agent(n2, [gce, late], **{"disable-source-dest-check": False})
    lab.wait_established(n2, [n1.ip])  # node-2 synced and routes
    wait_for(lambda: n1.pod_cidr.split("/")[0] in n2.routes(), 15, "node-1's pod CIDR on node-2")
    assert n2.plugin().srcdst is None
    assert fake.count() == {"i-0000000a": 1, "i-0000000b": 1, "i-0000000c": 1}
