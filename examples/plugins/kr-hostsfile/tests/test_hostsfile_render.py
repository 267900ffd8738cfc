"""Rendering is a pure function of the Services: checked against golden files.

Regenerate the golden files after an intended change with ``KR_UPDATE_GOLDEN=1 pytest ...``.
"""

from __future__ import annotations

import os

import pytest
from hostsfile_testkit import GOLDEN, make_service
from kr_hostsfile import HostEntry, render, render_services, service_entries
from kr_hostsfile.plugin import HEADER

SERVICES = [
    make_service("kubernetes", "default", ["10.96.0.1"]),
    make_service("kube-dns", "kube-system", ["10.96.0.10"]),
    # dual-stack: one line per family, IPv6 after every IPv4
    make_service("web", "shop", ["10.96.12.7", "fd00:10:96::c07"], external_ips=["192.0.2.10"]),
    make_service("api", "shop", ["10.96.3.200"], external_ips=["192.0.2.11", "2001:db8::11"]),
    # numeric order: 10.96.0.9 sorts before 10.96.0.10
    make_service("metrics", "monitoring", ["10.96.0.9"]),
    # no entries: headless, ExternalName, and a Service that has no cluster IP yet
    make_service("db", "shop", ["None"]),
    make_service("upstream", "shop", [], type="ExternalName", external_name="api.example.com"),
    make_service("pending", "shop", []),
    # bad input: skipped, the other address of the Service is kept
    make_service("odd", "shop", ["10.96.5.5", "not-an-ip"], external_ips=["300.1.2.3"]),
]


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("KR_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (KR_UPDATE_GOLDEN=1 to regenerate)"


def test_golden_cluster_ips() -> None:
    golden("services.hosts", render_services(SERVICES))


def test_golden_with_external_ips_and_domain() -> None:
    golden("services-external.hosts", render_services(SERVICES, "corp.example", include_external_ips=True))


def test_order_does_not_depend_on_input_order() -> None:
    assert render_services(reversed(SERVICES)) == render_services(SERVICES)


def test_line_format() -> None:
    (e,) = service_entries(make_service("web", "shop", ["10.96.12.7"]))
    assert e.line() == "10.96.12.7\tweb.shop.svc.cluster.local web.shop.svc web.shop"
    assert e == HostEntry("10.96.12.7", ("web.shop.svc.cluster.local", "web.shop.svc", "web.shop"), "shop/web")


@pytest.mark.parametrize(
    "svc",
    [
        make_service("db", cluster_ips=["None"]),
        make_service("db", cluster_ips=[""]),
        make_service("x", cluster_ips=[], type="ExternalName", external_name="example.com"),
    ],
    ids=["headless", "empty", "external-name"],
)
def test_no_cluster_ip_no_entry(svc) -> None:  # type: ignore[no-untyped-def]
    assert service_entries(svc) == ()
    assert service_entries(svc, include_external_ips=True) == ()


def test_invalid_addresses_are_reported_and_skipped() -> None:
    invalid: list[tuple[str, str]] = []
    entries = service_entries(
        make_service("odd", "shop", ["10.96.5.5", "nope"], ["1.2.3.999"]), "cluster.local", True, invalid
    )
    assert [e.ip for e in entries] == ["10.96.5.5"]
    assert invalid == [("clusterIP", "nope"), ("externalIP", "1.2.3.999")]


def test_ipv6_is_normalised_and_duplicates_collapse() -> None:
    svc = make_service("v6", "ns", ["FD00:0:0::1"], external_ips=["fd00::1"])
    entries = service_entries(svc, include_external_ips=True)
    assert [(e.ip, e.source) for e in entries] == [("fd00::1", "clusterIP")]


def test_empty_is_the_header_only() -> None:
    assert render([]) == HEADER
    assert render_services([]) == HEADER
