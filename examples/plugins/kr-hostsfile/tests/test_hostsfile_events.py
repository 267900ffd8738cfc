"""The plugin driven the way kr drives it: PluginHost + PluginCaller, caches filled by a FeedSource."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hostsfile_testkit import Harness, make_service
from kr_hostsfile import HostsFile
from kr_hostsfile.plugin import HEADER

from kr_core import EventType
from kr_core.plugins import discover

WEB = "10.96.12.7\tweb.shop.svc.cluster.local web.shop.svc web.shop"
DNS = "10.96.0.10\tkube-dns.kube-system.svc.cluster.local kube-dns.kube-system.svc kube-dns.kube-system"


def test_caller_sees_every_hook_it_implements(harness: Harness) -> None:
    assert set(harness.plugin.hooks) == {
        "configure",
        "start",
        "sync",
        "health",
        "state",
        "cleanup",
        "stop",
        "on_service",
    }


def test_initial_sync_writes_what_is_in_the_caches(tmp_path: Path) -> None:
    h = Harness(tmp_path, initial=[make_service("kube-dns", "kube-system"), make_service("db", "shop", ["None"])])
    h.start()
    assert h.events == []  # objects present at start-up are not replayed as ADDED
    assert h.text() == HEADER + DNS + "\n"
    assert h.plugin.state() == {
        "summary": {"services": 1, "entries": 1},
        "items": [
            {
                "service": "kube-system/kube-dns",
                "ip": "10.96.0.10",
                "names": ["kube-dns.kube-system.svc.cluster.local", "kube-dns.kube-system.svc", "kube-dns.kube-system"],
                "source": "clusterIP",
            }
        ],
    }
    assert h.plugin.health() is None
    assert h.metric("kr_hostsfile_entries") == 1
    assert h.metric("kr_hostsfile_writes_total") == 1


def test_added_modified_deleted(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kr.hostsfile")
    harness.start()
    assert harness.lines() == []

    web = make_service("web", "shop", ["10.96.12.7"])
    harness.feed.add(web)
    assert harness.events[-1].type is EventType.ADDED
    assert harness.lines() == [WEB]
    assert "Service shop/web ADDED: adding 1 entry (10.96.12.7)" in caplog.text

    harness.feed.add(make_service("kube-dns", "kube-system"))
    assert harness.lines() == [DNS, WEB]  # sorted by address

    # a dual-stack upgrade: the IPv6 address is added after every IPv4 one
    web2 = make_service("web", "shop", ["10.96.12.7", "fd00::c07"], resource_version="2")
    harness.feed.update(web2)
    assert harness.events[-1].type is EventType.MODIFIED
    assert harness.lines() == [DNS, WEB, "fd00::c07\tweb.shop.svc.cluster.local web.shop.svc web.shop"]
    assert "Service shop/web MODIFIED: entries 10.96.12.7 -> 10.96.12.7, fd00::c07" in caplog.text
    assert harness.plugin.state()["summary"] == {"services": 2, "entries": 3}

    harness.feed.delete(web2)
    assert harness.events[-1].type is EventType.DELETED
    assert harness.lines() == [DNS]
    assert "Service shop/web DELETED: removing 2 entries (10.96.12.7, fd00::c07): deleted" in caplog.text
    assert harness.plugin.state()["summary"] == {"services": 1, "entries": 1}
    assert harness.metric("kr_hostsfile_entries") == 1


def test_a_change_that_does_not_touch_the_file_does_not_rewrite_it(harness: Harness) -> None:
    harness.start()
    harness.feed.add(make_service("web", "shop", ["10.96.12.7"]))
    before = os.stat(harness.path)
    writes = harness.metric("kr_hostsfile_writes_total")
    # a new resourceVersion with the same addresses (a port or label change): same entries
    harness.feed.update(make_service("web", "shop", ["10.96.12.7"], resource_version="7"))
    harness.feed.add(make_service("db", "shop", ["None"]))  # headless: no entry
    harness.plugin.sync("periodic")
    after = os.stat(harness.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert harness.metric("kr_hostsfile_writes_total") == writes


def test_writes_are_atomic_renames_leaving_no_temporary_file(harness: Harness) -> None:
    harness.start()
    ino = os.stat(harness.path).st_ino
    harness.feed.add(make_service("web", "shop", ["10.96.12.7"]))
    assert os.stat(harness.path).st_ino != ino  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in harness.path.parent.iterdir()) == ["services.hosts"]
    assert oct(os.stat(harness.path).st_mode & 0o777) == "0o644"


def test_external_ips_and_cluster_domain(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"cluster_domain": "corp.example", "include_external_ips": True})
    h.start()
    h.feed.add(make_service("web", "shop", ["10.96.12.7"], external_ips=["192.0.2.10"]))
    assert h.lines() == [
        "10.96.12.7\tweb.shop.svc.corp.example web.shop.svc web.shop",
        "192.0.2.10\tweb.shop.svc.corp.example web.shop.svc web.shop",
    ]
    assert [i["source"] for i in h.plugin.state()["items"]] == ["clusterIP", "externalIP"]


def test_service_losing_its_cluster_ip(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kr.hostsfile")
    harness.start()
    harness.feed.add(make_service("up", "shop", ["10.96.1.1"]))
    harness.feed.update(
        make_service("up", "shop", [], type="ExternalName", external_name="x.example", resource_version="2")
    )
    assert harness.lines() == []
    assert "Service shop/up MODIFIED: removing 1 entry (10.96.1.1): no cluster IP any more" in caplog.text


def test_bad_address_is_logged_against_the_service_and_skipped(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.start()
    harness.feed.add(make_service("odd", "shop", ["10.96.5.5", "10.96.5.256"]))
    harness.feed.add(make_service("web", "shop", ["10.96.12.7"]))
    assert harness.lines() == ["10.96.5.5\todd.shop.svc.cluster.local odd.shop.svc odd.shop", WEB]
    assert "Service shop/odd: skipping clusterIP '10.96.5.256': not an IP address" in caplog.text
    assert harness.metric("kr_hostsfile_invalid_addresses_total") == 1


def test_sync_rebuilds_from_the_caches_and_repairs_drift(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    harness.start()
    harness.feed.add(make_service("web", "shop", ["10.96.12.7"]))
    # the map is rebuilt from the caches, whatever it held
    harness.instance.entries.clear()
    harness.plugin.sync("periodic")
    assert harness.lines() == [WEB]
    # someone edits the file behind kr's back: the next sync puts it right
    harness.path.write_text("10.0.0.1 evil\n")
    harness.plugin.sync("periodic")
    assert harness.lines() == [WEB]
    assert "was changed or removed outside kr" in caplog.text
    harness.path.unlink()
    harness.plugin.sync("periodic")
    assert harness.lines() == [WEB]


def test_restart_adopts_the_existing_file_without_rewriting_it(tmp_path: Path) -> None:
    first = Harness(tmp_path, initial=[make_service("web", "shop", ["10.96.12.7"])]).start()
    first.plugin.stop()
    assert first.lines() == [WEB]  # stop leaves the file in place
    st = os.stat(first.path)

    second = Harness(tmp_path, initial=[make_service("web", "shop", ["10.96.12.7"])]).start()
    assert (os.stat(second.path).st_ino, os.stat(second.path).st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert second.metric("kr_hostsfile_writes_total") == 0
    assert second.plugin.state()["summary"] == {"services": 1, "entries": 1}


def test_failed_write_is_unhealthy_raises_for_retry_and_recovers(harness: Harness) -> None:
    harness.start()
    # make the directory unusable: replace it with a regular file
    for p in harness.path.parent.iterdir():
        p.unlink()
    harness.path.parent.rmdir()
    harness.path.parent.write_text("not a directory")

    with pytest.raises(OSError):
        harness.feed.add(make_service("web", "shop", ["10.96.12.7"]))
    report = harness.plugin.health()
    assert report is not None and not report.healthy
    assert "writing" in report.message and "Service shop/web ADDED" in report.message
    assert harness.metric("kr_hostsfile_write_failures_total") == 1
    with pytest.raises(OSError):
        harness.plugin.sync("periodic")  # kr retries with backoff; still failing

    harness.path.parent.unlink()  # the operator fixes it; the retried sync succeeds
    harness.plugin.sync("periodic")
    assert harness.plugin.health() is None
    assert harness.lines() == [WEB]


def test_retried_event_after_a_failure_writes_even_if_entries_are_unchanged(harness: Harness) -> None:
    harness.start()
    web = make_service("web", "shop", ["10.96.12.7"])
    harness.path.unlink()
    harness.path.mkdir()  # the rename target is a directory: the write fails
    with pytest.raises(OSError):
        harness.feed.add(web)
    harness.path.rmdir()
    harness.plugin.deliver(harness.events[-1])  # kr's retry of the same event
    assert harness.lines() == [WEB]
    assert harness.plugin.health() is None


def test_cleanup_removes_the_file_and_only_it(harness: Harness) -> None:
    harness.start()
    harness.feed.add(make_service("web", "shop", ["10.96.12.7"]))
    neighbour = harness.path.parent / "other.hosts"
    neighbour.write_text("keep me\n")
    (harness.path.parent / ".services.hosts.abc123.tmp").write_text("left by a crash")
    harness.plugin.cleanup()
    assert not harness.path.exists()
    assert sorted(p.name for p in harness.path.parent.iterdir()) == ["other.hosts"]
    assert harness.plugin.state() == {"summary": {"services": 0, "entries": 0}, "items": []}


def test_cleanup_on_a_clean_host_succeeds(tmp_path: Path) -> None:
    """``kr cleanup`` calls configure then cleanup, nothing else, possibly on a host where nothing exists."""
    h = Harness(tmp_path).configure()
    h.plugin.cleanup()
    h.plugin.cleanup()
    assert not h.path.exists()
    assert h.plugin.health() is None


def test_only_services_are_watched(harness: Harness) -> None:
    assert {r.value for r in harness.host.resources} == {"Service"}
    with pytest.raises(LookupError, match="not watched for this plugin"):
        harness.ctx.caches.pods.list()


def test_discovered_as_an_installed_distribution() -> None:
    found = {d.name: d for d in discover()}
    if "hostsfile" not in found:
        pytest.skip("kr-plugin-hostsfile is not installed (pip install ./examples/plugins/kr-hostsfile)")
    d = found["hostsfile"]
    assert d.distribution == "kr-plugin-hostsfile"
    assert d.loaded and d.cls is HostsFile
    assert d.info is not None and d.info.role == "service-hosts"
