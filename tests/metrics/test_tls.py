"""TLS and basic auth from files against a real HTTPS server on loopback: certificates are checked
by default (an endpoint whose certificate the operator cannot verify gets no request, so no
credential), a CA file makes its own CA's certificate good, insecureSkipVerify turns the check off,
and basic auth is read from its files at every read (a rotated password is used at once)."""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmscale.api.models import parse_spec
from llmscale.metrics.endpoints import BasicAuthFiles, Endpoint, Endpoints
from llmscale.metrics.prometheus import PrometheusReader
from tests.conftest import spec_dict
from tests.metrics.test_credentials import EMPTY


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl, as a platform team would)."""
    if shutil.which("openssl") is None:  # Debian's openssl is part of the bed's setup
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=llmscale test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt",
        "-days", "2", "-extfile", "san.ext")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


class HttpsRecorder:
    """Answers like an empty Prometheus over HTTPS and records the requests that got through TLS."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.requests: list[dict[str, str]] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                rec.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                self.send_response(200)
                self.send_header("Content-Length", str(len(EMPTY)))
                self.end_headers()
                self.wfile.write(EMPTY)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.server.handle_error = lambda *a: None  # type: ignore[method-assign]  # failed handshakes are the point
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def https(pki: dict[str, Path]) -> Iterator[HttpsRecorder]:
    server = HttpsRecorder(pki["cert"], pki["key"])
    yield server
    server.close()


def _read(endpoint: Endpoint) -> Any:
    key = ("team-a", "chat")
    return PrometheusReader(Endpoints.build(endpoint)).read({key: parse_spec(spec_dict())}, 1000.0)[key]


def _secret(tmp_path: Path, name: str, value: str) -> str:
    p = tmp_path / name
    p.write_text(value + "\n")
    return str(p)


def test_a_certificate_the_operator_cannot_verify_gets_no_request_and_no_credential(
        https: HttpsRecorder, tmp_path: Path) -> None:
    """TLS verification is on by default: a server whose CA the operator was not given is refused in
    the handshake, before any HTTP request (and so before any Authorization header) is sent."""
    s = _read(Endpoint(name="default", url=https.url, bearer_token_file=_secret(tmp_path, "token", "s3cret")))
    assert s.unavailable is not None and "s3cret" not in s.unavailable
    assert "SSLError" in s.unavailable, s.unavailable  # the certificate, not the connection or the config
    assert https.requests == []


def test_a_certificate_for_another_host_is_refused_even_from_a_trusted_ca(
        https: HttpsRecorder, pki: dict[str, Path], tmp_path: Path) -> None:
    """The CA is trusted, but the certificate names 127.0.0.1 only: `localhost` is another host."""
    url = https.url.replace("127.0.0.1", "localhost")
    s = _read(Endpoint(name="default", url=url, ca_file=str(pki["ca"]), bearer_token_file=_secret(tmp_path, "token", "s3cret")))
    assert s.unavailable is not None and "SSLError" in s.unavailable, s.unavailable
    assert https.requests == []


def test_the_endpoints_ca_file_makes_its_certificate_good(https: HttpsRecorder, pki: dict[str, Path], tmp_path: Path) -> None:
    s = _read(Endpoint(name="default", url=https.url, ca_file=str(pki["ca"]),
                       bearer_token_file=_secret(tmp_path, "token", "s3cret")))
    assert s.unavailable is None, s.unavailable
    assert https.requests and all(r.get("authorization") == "Bearer s3cret" for r in https.requests)


def test_insecure_skip_verify_reads_without_checking_the_certificate(https: HttpsRecorder) -> None:
    s = _read(Endpoint(name="default", url=https.url, insecure_skip_verify=True))
    assert s.unavailable is None, s.unavailable
    assert https.requests and all("authorization" not in r for r in https.requests)  # no credential configured


def test_basic_auth_comes_from_its_files_and_a_rotated_password_is_used_at_once(
        https: HttpsRecorder, pki: dict[str, Path], tmp_path: Path) -> None:
    user, password = _secret(tmp_path, "user", "reader"), _secret(tmp_path, "password", "first pass")
    endpoint = Endpoint(name="default", url=https.url, ca_file=str(pki["ca"]),
                        basic_auth=BasicAuthFiles(username_file=user, password_file=password))
    reader = PrometheusReader(Endpoints.build(endpoint))
    spec = parse_spec(spec_dict())
    assert reader.read({("a", "b"): spec}, 1.0)[("a", "b")].unavailable is None
    Path(password).write_text("second pass\n")
    assert reader.read({("a", "b"): spec}, 2.0)[("a", "b")].unavailable is None
    sent = [base64.b64decode(r["authorization"].removeprefix("Basic ")).decode() for r in https.requests]
    assert sent[0] == "reader:first pass" and sent[-1] == "reader:second pass", sent
