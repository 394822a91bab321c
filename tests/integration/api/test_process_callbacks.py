"""Where /process callbacks may go and when they stop, over real HTTP on 127.0.0.1: the
callback host allow-list at POST time (typed 403/422), internal addresses refused at
delivery unless their host is listed exactly, redirects never followed, and deliveries
given up after their attempts or their age, shown by GET /process/{job_id} and counted
in /metrics."""

from __future__ import annotations

import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from facescan_api.callback_targets import CallbackRules, internal
from facescan_api.callbacks import DeliveryPolicy
from tests.integration.api.process_support import (
    AUTH,
    Receiver,
    http_server,
    job_status,
    process_server,
    submit,
)
from tests.integration.api.support import ApiServer

pytestmark = pytest.mark.slow


def failed_download_job(job_id: str, base: str, callback_url: str) -> dict[str, str]:
    """A job that settles at once (its media answers 404), owing its callback."""
    return {
        "job_id": job_id,
        "media_id": "m",
        "media_url": f"{base}/missing.jpg",
        "callback_url": callback_url,
    }


def wait_delivery(server: ApiServer, job_id: str, state: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = job_status(server, job_id).json()
        if body["callback"]["state"] == state:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}'s callback not {state}: {body}\n{server.output()}")


def metric(server: ApiServer, line_start: str) -> float:
    text = server.request("GET", "/metrics", headers=AUTH, timeout=10).body.decode()
    for line in text.splitlines():
        if line.startswith(f"{line_start} "):
            return float(line.split()[1])
    return 0.0


def test_a_receiver_that_always_fails_gets_exactly_the_attempts_allowed_then_it_is_given_up(
    dsn: str, tmp_path: Path
) -> None:
    failing = Receiver(fail_first=10**6)
    redirected: list[str] = []
    lock = threading.Lock()

    def moved(request: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        request.rfile.read(int(request.headers.get("Content-Length", "0")))
        with lock:
            redirected.append(request.path)
        return 307, b"", {"Location": "/landing"}

    landed: list[str] = []

    def landing(request: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        landed.append(request.path)
        return 200, b"ok", {}

    routes = {"/hook": failing.handle, "/moved": moved, "/landing": landing}
    with http_server(routes) as base:
        server = process_server(
            dsn,
            tmp_path / "media",
            tmp_path / "server.log",
            extra=("--callback-max-attempts", "3"),
        )
        try:
            assert submit(server, failed_download_job("f", base, f"{base}/hook")).status == 202
            assert submit(server, failed_download_job("r", base, f"{base}/moved")).status == 202
            failed = wait_delivery(server, "f", "given_up")
            moved_away = wait_delivery(server, "r", "given_up")
            time.sleep(1.5)  # nothing more comes once given up
            again = job_status(server, "f").json()
            given_up = metric(server, "facescan_api_callbacks_given_up_total")
            failures = metric(server, 'facescan_api_callback_deliveries_total{outcome="failed"}')
        finally:
            assert server.stop() == 0, server.output()
    assert [d.status for d in failing.deliveries] == [503, 503, 503]
    assert failing.deliveries[0].headers["Host"] == base.removeprefix("http://")
    assert [d.headers["X-Facescan-Delivery-Attempt"] for d in failing.deliveries] == [
        "1",
        "2",
        "3",
    ]
    callback = failed["callback"]
    assert callback["attempts"] == 3
    assert callback["acknowledged_at"] is None
    assert callback["next_attempt_at"] is None
    assert "given up after 3 attempts" in callback["last_error"]
    assert "HTTP 503" in callback["last_error"]
    assert again["callback"] == callback
    assert redirected == ["/moved"] * 3
    assert landed == []  # a redirect is never followed
    assert "redirects are not followed" in moved_away["callback"]["last_error"]
    assert given_up == 2
    assert failures == 6


def test_a_callback_is_given_up_once_its_age_passes_the_limit(dsn: str, tmp_path: Path) -> None:
    failing = Receiver(fail_first=10**6)
    with http_server({"/hook": failing.handle}) as base:
        server = process_server(
            dsn,
            tmp_path / "media",
            tmp_path / "server.log",
            extra=("--callback-give-up-after", "0.001"),  # 3.6 s
        )
        try:
            started = time.monotonic()
            assert submit(server, failed_download_job("old", base, f"{base}/hook")).status == 202
            pending = job_status(server, "old").json()["callback"]
            body = wait_delivery(server, "old", "given_up")
            elapsed = time.monotonic() - started
            count = len(failing.deliveries)
            time.sleep(1.5)
        finally:
            assert server.stop() == 0, server.output()
    assert pending["state"] == "pending"
    assert 3.0 < elapsed < 30
    assert count >= 3  # 0.2 s, 0.4 s, 0.8 s, ... until the deadline
    assert len(failing.deliveries) == count
    assert body["callback"]["attempts"] == count
    assert "0.001 h after the job settled" in body["callback"]["last_error"]


def test_callback_urls_outside_the_rules_are_refused_with_typed_errors(
    dsn: str, tmp_path: Path
) -> None:
    receiver = Receiver()
    with http_server({"/hook": receiver.handle}) as base:
        port = base.rsplit(":", 1)[1]
        server = process_server(
            dsn,
            tmp_path / "media",
            tmp_path / "server.log",
            callback_hosts=("*", "hooks.example.com"),
        )
        try:
            cases = [
                ("http://user:pw@hooks.example.com/h", 422),
                ("ftp://hooks.example.com/h", 422),
                ("file:///etc/passwd", 422),
                ("http:///nohost", 422),
                (f"http://127.0.0.1:{port}/hook", 403),  # loopback, not listed exactly
                ("http://169.254.169.254/latest/meta-data/", 403),  # cloud metadata
                ("http://10.1.2.3/hook", 403),
                ("http://[::1]:9/hook", 403),
                ("http://[::ffff:127.0.0.1]:9/hook", 403),
                ("http://0.0.0.0:9/hook", 403),
            ]
            answers = [
                (url, submit(server, failed_download_job(f"c{i}", base, url)))
                for i, (url, _) in enumerate(cases)
            ]
            # a name that resolves to loopback passes the list ("*") and is refused
            # when delivered: nothing reaches the receiver
            by_name = failed_download_job("name", base, f"http://localhost:{port}/hook")
            accepted = submit(server, by_name)
            refused = wait_delivery(server, "name", "given_up")
            counted = metric(server, "facescan_api_callbacks_given_up_total")
        finally:
            assert server.stop() == 0, server.output()
    for (url, answer), (_, status) in zip(answers, cases, strict=True):
        assert answer.status == status, (url, answer.body)
        assert answer.json()["error"] == "url_not_allowed", (url, answer.body)
    assert "credentials" in answers[0][1].json()["detail"]
    assert "loopback" in answers[4][1].json()["detail"]
    assert "link-local" in answers[5][1].json()["detail"]
    assert accepted.status == 202, accepted.body
    assert receiver.deliveries == []
    assert refused["callback"]["attempts"] == 1
    assert "loopback" in refused["callback"]["last_error"]
    assert counted == 1
    assert "Traceback" not in server.output()


def test_without_callback_hosts_every_callback_url_is_refused(dsn: str, tmp_path: Path) -> None:
    server = process_server(dsn, tmp_path / "media", tmp_path / "server.log", callback_hosts=())
    try:
        job = failed_download_job("j", "http://127.0.0.1:9", "http://127.0.0.1:9/hook")
        answer = submit(server, job)
        missing = job_status(server, "j")
    finally:
        assert server.stop() == 0, server.output()
    assert answer.status == 403
    assert answer.json()["error"] == "url_not_allowed"
    assert "--callback-host is not set" in answer.json()["detail"]
    assert missing.status == 404  # refused: no job made


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("127.0.0.53", "loopback"),
        ("192.168.1.10", "private"),
        ("172.16.0.1", "private"),
        ("fd00:ec2::254", "private"),
        ("100.64.0.1", "reserved or shared"),
        ("224.0.0.1", "multicast"),
        ("::ffff:10.0.0.1", "private"),
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_internal_addresses_are_named(address: str, why: str | None) -> None:
    assert internal(ipaddress.ip_address(address)) == why


def test_wildcards_match_names_below_their_domain_only() -> None:
    rules = CallbackRules(frozenset({"*.example.com", "10.0.0.5"}))
    assert rules.allows("hooks.example.com")
    assert rules.allows("A.B.Example.COM")
    assert not rules.allows("example.com")
    assert not rules.allows("evilexample.com")
    assert not rules.allows("example.com.evil.net")
    assert rules.allows("10.0.0.5")
    assert rules.exact("10.0.0.5")
    assert not rules.exact("hooks.example.com")


def test_the_last_attempt_falls_at_the_deadline() -> None:
    policy = DeliveryPolicy(
        timeout_s=10,
        backoff_s=5,
        backoff_cap_s=3600,
        max_attempts=50,
        give_up_after_s=86400,
        poll_s=1,
    )
    assert [policy.delay(n, 0) for n in (1, 2, 3)] == [5, 10, 20]
    assert policy.delay(20, 0) == 3600
    assert policy.delay(20, 86000) == 400
    assert policy.give_up(20, 86399) is None
    assert policy.give_up(20, 86400) is not None
    assert policy.give_up(50, 0) is not None


async def test_a_delivery_goes_to_the_next_address_when_one_does_not_connect() -> None:
    """A host with two addresses where this server reaches only the second (an IPv6 one
    without a route, say): the callback is delivered there, not failed for ever."""
    import httpx

    from facescan_api.callback_targets import Target
    from facescan_api.callbacks import _post_first

    receiver = Receiver()
    with http_server({"/hook": receiver.handle}) as base:
        port = base.rsplit(":", 1)[1]
        unreachable = httpx.URL(f"http://127.0.0.2:{port}/hook")  # nothing listens there
        target = Target((unreachable, httpx.URL(f"{base}/hook")), {"Host": "hooks"}, {})
        async with httpx.AsyncClient() as client:
            answer = await _post_first(client, target, b"{}", target.headers)
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await _post_first(client, Target((unreachable,), {}, {}), b"{}", {})

    assert answer.status_code == 200
    assert [d.headers["Host"] for d in receiver.deliveries] == ["hooks"]
