"""/process over https, with real TLS on 127.0.0.1: an organisation's own CA given with
--ca-file is trusted for media downloads and callbacks (the callback connects to the
resolved address, the certificate checked against the URL's host); without it the same
callback is never delivered, and a --ca-file that holds no certificate stops the server
with the reason."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from facescan_devcluster import pki
from tests.integration.api.process_support import (
    Receiver,
    file_route,
    http_server,
    job_status,
    process_server,
    submit,
)
from tests.integration.api.support import SAMPLES
from tests.integration.detector.support import HOG_FACES

pytestmark = pytest.mark.slow


@pytest.fixture
def own_ca(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA of the test's own and a server certificate it signed for localhost and
    127.0.0.1: the CA's file and the serving side's TLS context."""
    folder = tmp_path / "pki"
    pki.make_pki(folder)
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(folder / "apiserver.crt", folder / "apiserver.key")
    return folder / "ca.crt", serving


def test_the_own_ca_is_trusted_for_media_and_callbacks_over_https(
    dsn: str, tmp_path: Path, own_ca: tuple[Path, ssl.SSLContext]
) -> None:
    ca_file, serving = own_ca
    receiver = Receiver()
    routes = {"/group.jpg": file_route(SAMPLES / "group_t1.jpg"), "/hook": receiver.handle}
    with http_server(routes, tls=serving, host="localhost") as base:
        server = process_server(
            dsn,
            tmp_path / "media",
            tmp_path / "server.log",
            callback_hosts=("localhost",),
            extra=("--allow-host", "localhost", "--ca-file", str(ca_file)),
        )
        try:
            job = {
                "job_id": "tls-1",
                "media_id": "m-1",
                "media_url": f"{base}/group.jpg",
                "callback_url": f"{base}/hook",
            }
            assert submit(server, job).status == 202
            receiver.wait(1)
            status = job_status(server, "tls-1").json()
        finally:
            assert server.stop() == 0, server.output()
    assert [d.status for d in receiver.deliveries] == [200]
    delivered = receiver.deliveries[0]
    assert delivered.signed
    assert delivered.headers["Host"] == base.removeprefix("https://")
    assert delivered.json()["state"] == "done"
    assert len(delivered.json()["faces"]) == HOG_FACES["group_t1.jpg"]
    assert status["callback"]["state"] == "acknowledged"


def test_without_the_ca_file_an_https_callback_is_never_delivered(
    dsn: str, tmp_path: Path, own_ca: tuple[Path, ssl.SSLContext]
) -> None:
    _, serving = own_ca
    receiver = Receiver()
    with (
        http_server({}) as media,
        http_server({"/hook": receiver.handle}, tls=serving, host="localhost") as hooks,
    ):
        server = process_server(
            dsn, tmp_path / "media", tmp_path / "server.log", callback_hosts=("localhost",)
        )
        try:
            job = {
                "job_id": "tls-2",
                "media_id": "m-2",
                "media_url": f"{media}/missing.jpg",  # settles at once (404), owing its callback
                "callback_url": f"{hooks}/hook",
            }
            assert submit(server, job).status == 202
            deadline = time.monotonic() + 60
            callback = job_status(server, "tls-2").json()["callback"]
            while callback["attempts"] < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
                callback = job_status(server, "tls-2").json()["callback"]
        finally:
            assert server.stop() == 0, server.output()
    assert callback["attempts"] >= 2, callback
    assert callback["state"] == "pending"
    assert "CERTIFICATE_VERIFY_FAILED" in callback["last_error"]
    assert receiver.deliveries == []


def test_a_ca_file_without_certificates_stops_the_server_with_the_reason(
    dsn: str, tmp_path: Path
) -> None:
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("this is not a certificate\n")

    with pytest.raises(AssertionError, match="server exited") as failed:
        process_server(
            dsn, tmp_path / "media", tmp_path / "server.log", extra=("--ca-file", str(not_pem))
        )

    assert f"--ca-file {not_pem}: not a PEM file of CA certificates" in str(failed.value)
