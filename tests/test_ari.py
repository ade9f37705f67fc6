"""ACME Renewal Information (RFC 9773) against a loopback responder that follows the
RFC's examples (tests/acme.py; Debian's pebble 2.4.0 serves no renewalInfo), with the
fetcher's clock injected; then through `certwatch check` and the daemon."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certwatch.core.inventory import Endpoint
from certwatch.core.renewal import certificate_id, judge_renewal
from certwatch.core.x509 import CertInfo, parse_certificate
from certwatch.sources.ari import RenewalInfoFetcher
from tests.acme import RenewalInfoResponder
from tests.pki import Issued, make_intermediate, make_leaf, make_root
from tests.servers import TLSServer
from tests.test_cli import certwatch
from tests.test_daemon import start_daemon, wait_for

NOW = datetime.now(timezone.utc).replace(microsecond=0)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Path]:
    directory = tmp_path_factory.mktemp("ari")
    root = make_root("ARI Root", not_before=NOW - 400 * DAY, not_after=NOW + 3000 * DAY)
    inter = make_intermediate(root, "ARI Intermediate", not_before=NOW - 400 * DAY,
                              not_after=NOW + 2000 * DAY)
    (directory / "root.pem").write_bytes(root.cert_pem)
    return inter, directory


@pytest.fixture
def responder(ca: tuple[Issued, Path]) -> Iterator[RenewalInfoResponder]:
    issuer, directory = ca
    cert, key = make_leaf(issuer, ["127.0.0.1"], not_before=NOW - DAY,
                          not_after=NOW + 89 * DAY).write(directory, "acme")
    with RenewalInfoResponder(cert, key) as server:
        yield server


def issue(issuer: Issued, *, days_left: float = 60, lifetime: float = 90) -> tuple[Issued, CertInfo]:
    issued = make_leaf(issuer, ["svc.test"], not_before=NOW + (days_left - lifetime) * DAY,
                       not_after=NOW + days_left * DAY)
    return issued, parse_certificate(issued.cert.public_bytes(Encoding.DER), 0)


def cert_id(leaf: CertInfo) -> str:
    assert leaf.authority_key_id is not None
    return certificate_id(leaf.authority_key_id, leaf.serial)


def endpoint_for(responder: RenewalInfoResponder, directory: Path) -> Endpoint:
    return Endpoint(name="web", host="127.0.0.1", port=443, server_name="svc.test",
                    ca_file=directory / "root.pem", acme_directory=responder.directory_url)


def refresh(fetcher: RenewalInfoFetcher, endpoint: Endpoint, leaf: CertInfo) -> bool:
    async def run() -> bool:
        try:
            return await fetcher.refresh(endpoint, [leaf])
        finally:
            await fetcher.aclose()
    return asyncio.run(run())


def test_the_window_is_fetched_by_certificate_id_and_cached_until_retry_after(
        ca: tuple[Issued, Path], responder: RenewalInfoResponder) -> None:
    issuer, directory = ca
    _, leaf = issue(issuer)
    window = (NOW + 20 * DAY, NOW + 22 * DAY)
    responder.windows[cert_id(leaf)] = window
    clock = Clock()
    fetcher = RenewalInfoFetcher(clock=clock)
    endpoint = endpoint_for(responder, directory)
    assert refresh(fetcher, endpoint, leaf) is True
    info = fetcher.known[leaf.fingerprint_sha256]
    assert info.window is not None and (info.window.start, info.window.end) == window
    assert info.explanation_url == f"{responder.base}/docs/ari" and info.error is None
    assert info.next_check_at == NOW + 6 * HOUR  # Retry-After: 21600
    assert responder.requests == ["/directory", f"/renewal-info/{cert_id(leaf)}"]

    clock.now = NOW + 5 * HOUR  # not yet due: nothing is asked
    assert refresh(fetcher, endpoint, leaf) is False
    assert len(responder.requests) == 2
    clock.now = NOW + 6 * HOUR  # due: the window again (the directory is kept a day)
    assert refresh(fetcher, endpoint, leaf) is False  # nothing new was learnt
    assert responder.requests[2:] == [f"/renewal-info/{cert_id(leaf)}"]
    renewal = judge_renewal(leaf, clock.now, fetcher.known[leaf.fingerprint_sha256])
    assert (renewal.basis, renewal.due_at, renewal.overdue) == ("ari", window[1], False)


@pytest.mark.parametrize(("header", "wait"), [
    ("1", timedelta(minutes=1)), ("999999", DAY), (None, 6 * HOUR), ("soon", 6 * HOUR),
    ((NOW + 2 * HOUR).strftime("%a, %d %b %Y %H:%M:%S GMT"), 2 * HOUR)])
def test_retry_after_is_honoured_within_bounds(ca: tuple[Issued, Path],
                                               responder: RenewalInfoResponder,
                                               header: str | None, wait: timedelta) -> None:
    issuer, directory = ca
    _, leaf = issue(issuer)
    responder.windows[cert_id(leaf)] = (NOW + 20 * DAY, NOW + 22 * DAY)
    responder.retry_after = header
    fetcher = RenewalInfoFetcher(clock=Clock())
    refresh(fetcher, endpoint_for(responder, directory), leaf)
    assert fetcher.known[leaf.fingerprint_sha256].next_check_at == NOW + wait


def test_a_window_moved_earlier_is_flagged(ca: tuple[Issued, Path],
                                           responder: RenewalInfoResponder) -> None:
    issuer, directory = ca
    _, leaf = issue(issuer)
    planned = (NOW + 20 * DAY, NOW + 22 * DAY)
    responder.windows[cert_id(leaf)] = planned
    clock = Clock()
    fetcher = RenewalInfoFetcher(clock=clock)
    endpoint = endpoint_for(responder, directory)
    refresh(fetcher, endpoint, leaf)
    # The CA plans a revocation: the window now lies in the past.
    responder.windows[cert_id(leaf)] = (NOW - DAY, NOW + HOUR)
    clock.now = NOW + 6 * HOUR
    assert refresh(fetcher, endpoint, leaf) is True
    info = fetcher.known[leaf.fingerprint_sha256]
    assert info.planned is not None and (info.planned.start, info.planned.end) == planned
    renewal = judge_renewal(leaf, clock.now, info)
    assert renewal.window_moved_earlier and renewal.overdue


def test_failures_soft_fail_keep_the_window_and_back_off(ca: tuple[Issued, Path],
                                                         responder: RenewalInfoResponder) -> None:
    issuer, directory = ca
    _, leaf = issue(issuer)
    responder.windows[cert_id(leaf)] = (NOW + 20 * DAY, NOW + 22 * DAY)
    clock = Clock()
    fetcher = RenewalInfoFetcher(clock=clock)
    endpoint = endpoint_for(responder, directory)
    refresh(fetcher, endpoint, leaf)
    responder.status = 503  # temporary: a minute, then two, ...
    for attempt, wait in enumerate((timedelta(minutes=1), timedelta(minutes=2)), start=1):
        clock.now = fetcher.known[leaf.fingerprint_sha256].next_check_at  # type: ignore[assignment]
        refresh(fetcher, endpoint, leaf)
        info = fetcher.known[leaf.fingerprint_sha256]
        assert info.error == f"HTTP 503 from {responder.base}", attempt
        assert info.window is not None  # the last window known is kept
        assert info.next_check_at == clock.now + wait
    responder.status = 200
    responder.body = json.dumps({"suggestedWindow": {"start": "2026-01-03T00:00:00Z",
                                                     "end": "2026-01-02T00:00:00Z"}}).encode()
    clock.now = fetcher.known[leaf.fingerprint_sha256].next_check_at  # type: ignore[assignment]
    refresh(fetcher, endpoint, leaf)
    info = fetcher.known[leaf.fingerprint_sha256]  # long-term: six hours
    assert info.error == "the suggested window ends before it starts"
    assert info.next_check_at == clock.now + 6 * HOUR
    responder.body = b"[" * (128 * 1024)
    clock.now = info.next_check_at  # type: ignore[assignment]
    refresh(fetcher, endpoint, leaf)
    assert fetcher.known[leaf.fingerprint_sha256].error == "response over 65536 bytes"


def test_a_slow_ca_costs_one_bounded_timeout(ca: tuple[Issued, Path],
                                             responder: RenewalInfoResponder) -> None:
    issuer, directory = ca
    _, leaf = issue(issuer)
    responder.windows[cert_id(leaf)] = (NOW + 20 * DAY, NOW + 22 * DAY)
    responder.delay = 3.0
    fetcher = RenewalInfoFetcher(timeout=0.5, clock=Clock())
    started = time.monotonic()
    refresh(fetcher, endpoint_for(responder, directory), leaf)
    elapsed = time.monotonic() - started
    info = fetcher.known[leaf.fingerprint_sha256]
    assert info.error == f"no answer within 0.5s from {responder.base}" and info.window is None
    assert elapsed < 2.5
    assert info.next_check_at == NOW + timedelta(minutes=1)  # temporary


def test_what_is_never_asked(ca: tuple[Issued, Path], responder: RenewalInfoResponder) -> None:
    issuer, directory = ca
    endpoint = endpoint_for(responder, directory)
    fetcher = RenewalInfoFetcher(clock=Clock())
    _, expired = issue(issuer, days_left=-1)
    _, fine = issue(issuer)
    no_aki = make_leaf(issuer, ["svc.test"], not_before=NOW - DAY, not_after=NOW + DAY, aki=False)
    without_aki = parse_certificate(no_aki.cert.public_bytes(Encoding.DER), 0)
    assert not fetcher.due(endpoint, expired, NOW)  # RFC 9773 4.3: not after expiry
    assert not fetcher.due(endpoint, without_aki, NOW)  # no AKI: no certificate id
    assert not fetcher.due(Endpoint(name="x", host="x.test", port=443), fine, NOW)
    assert fetcher.due(endpoint, fine, NOW)


def test_a_directory_without_renewal_info_says_so(ca: tuple[Issued, Path]) -> None:
    issuer, directory = ca
    cert, key = make_leaf(issuer, ["127.0.0.1"], not_before=NOW - DAY,
                          not_after=NOW + 89 * DAY).write(directory, "plain-acme")
    _, leaf = issue(issuer)
    with RenewalInfoResponder(cert, key, offers_renewal_info=False) as plain:
        fetcher = RenewalInfoFetcher(clock=Clock())
        refresh(fetcher, endpoint_for(plain, directory), leaf)
    info = fetcher.known[leaf.fingerprint_sha256]
    assert (info.window, info.error) == (None, "the ACME directory offers no renewalInfo")
    assert info.next_check_at == NOW + 6 * HOUR


def test_check_shows_the_window_and_a_renewal_the_ca_wants_now(
        ca: tuple[Issued, Path], responder: RenewalInfoResponder, tmp_path: Path) -> None:
    issuer, directory = ca
    issued, leaf = issue(issuer, days_left=80)  # young: by its lifetime, nothing is due
    ended = (NOW - 2 * DAY, NOW - DAY)  # the CA wanted it replaced by yesterday
    responder.windows[cert_id(leaf)] = ended
    with TLSServer({None: issued.write(tmp_path, "leaf")}) as server:
        result = certwatch("check", f"127.0.0.1:{server.port}", "--server-name", "svc.test",
                           "--ca-file", str(directory / "root.pem"),
                           "--acme-directory", responder.directory_url, "--format", "json")
    (target,) = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    assert (target["state"], target["reasons"]) == ("warning", ["renewal_overdue"])
    renewal = target["renewal"]
    assert (renewal["basis"], renewal["overdue"]) == ("ari", True)
    assert (renewal["window_start"], renewal["window_end"]) == tuple(
        m.strftime("%Y-%m-%dT%H:%M:%SZ") for m in ended)
    assert renewal["explanation_url"] == f"{responder.base}/docs/ari"
    assert target["acme_directory"] == responder.directory_url


def test_the_daemon_exports_the_window_and_judges_by_it(
        ca: tuple[Issued, Path], responder: RenewalInfoResponder, tmp_path: Path) -> None:
    issuer, directory = ca
    fresh, fresh_info = issue(issuer, days_left=80)
    window = (NOW + 50 * DAY, NOW + 52 * DAY)
    responder.windows[cert_id(fresh_info)] = window
    with TLSServer({None: fresh.write(tmp_path, "leaf")}) as server:
        config = tmp_path / "certwatch.yaml"
        config.write_text(
            f"defaults: {{ca_file: {directory / 'root.pem'}, system_trust: false, interval: 1s,"
            f" retry_interval: 1s, timeout: 2, acme_directory: '{responder.directory_url}'}}\n"
            f"endpoints:\n  - {{name: web, host: 127.0.0.1, port: {server.port}, "
            f"server_name: svc.test}}\n")
        daemon = start_daemon(config, tmp_path / "daemon.log")
        try:
            target = wait_for("the CA's window", lambda: (t := daemon.targets().get("web"))
                              and t["renewal"]["basis"] == "ari" and t)
            assert target["state"] == "ok" and target["renewal"]["overdue"] is False
            metrics = daemon.metrics()
            (start,) = metrics["certwatch_cert_renewal_window_start_timestamp_seconds"]
            (end,) = metrics["certwatch_cert_renewal_window_end_timestamp_seconds"]
            (due,) = metrics["certwatch_cert_renewal_due_timestamp_seconds"]
            assert (start.value, end.value, due.value) == (
                window[0].timestamp(), window[1].timestamp(), window[1].timestamp())
            (moved,) = metrics["certwatch_cert_renewal_window_moved_earlier"]
            assert moved.value == 0
            # Cached until Retry-After: probes every second ask the CA nothing more.
            asked = len(responder.requests)
            wait_for("more probes", lambda: daemon.targets()["web"]["last_probe_at"]
                     > target["last_probe_at"])
            assert len(responder.requests) == asked
        finally:
            assert daemon.stop() == 0
