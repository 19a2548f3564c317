"""SharedTransport (httpx's own transport, shared) against real servers on loopback: the standard library's HTTP server, over plain
TCP, HTTP/1.0 and TLS with a certificate made for the test."""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devkit.emulators import free_port
from function import Settings, SharedTransport
from function._wiring import build_pipeline


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        body = self._request_body()
        path = self.path.split("?")[0]
        self.server.seen.append({"path": self.path, "port": self.client_address[1], "headers": dict(self.headers)})
        if path == "/slow":
            time.sleep(0.5)
        if path == "/chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (b"first ", b"second"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/truncated":
            self.send_response(200)
            self.send_header("content-length", "100")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
            return
        if path == "/large":
            payload = b"x" * 200_000
        else:
            payload = json.dumps(
                {"method": self.command, "path": self.path, "body": body.decode(), "port": self.client_address[1]}
            ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-latin", "caf\xe9")
        if path == "/close":
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        # Closed after answering without saying so, as a server ending an idle keep-alive does.
        if path == "/then-close":
            self.close_connection = True

    def _request_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return body
        return self.rfile.read(int(self.headers.get("content-length", 0)))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, protocol: str = "HTTP/1.1", tls: ssl.SSLContext | None = None) -> None:
        handler = type("Handler", (_Handler,), {"protocol_version": protocol})
        super().__init__(("127.0.0.1", 0), handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.seen: list[dict] = []
        self.closed = threading.Event()

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        self.closed.set()

    @property
    def port(self) -> int:
        return self.server_address[1]


@pytest.fixture
def serve() -> Iterator:
    servers: list[_Server] = []

    def start(protocol: str = "HTTP/1.1", tls: ssl.SSLContext | None = None) -> _Server:
        server = _Server(protocol, tls)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(serve) -> _Server:
    return serve()


def _client(transport: SharedTransport, **options) -> httpx.Client:
    return httpx.Client(transport=transport, trust_env=False, **options)


def test_sends_method_path_query_headers_and_body_and_reads_the_answer(server):
    with _client(SharedTransport()) as client:
        answer = client.post(
            f"http://127.0.0.1:{server.port}/v1/a%2Fb:cancel?x=1&y=%C3%A9", content=b'{"k": 1}', headers={"x-k": "v"}
        )
    assert answer.status_code == 200
    assert answer.json() == {
        "method": "POST",
        "path": "/v1/a%2Fb:cancel?x=1&y=%C3%A9",
        "body": '{"k": 1}',
        "port": answer.json()["port"],
    }
    assert server.seen[0]["headers"]["x-k"] == "v"
    assert server.seen[0]["headers"]["Host"] == f"127.0.0.1:{server.port}"
    assert answer.http_version == "HTTP/1.1"
    assert answer.reason_phrase == "OK"
    # Sent as Latin-1 bytes, read back as the same text.
    assert answer.headers["x-latin"] == "caf\xe9"


def test_a_kept_alive_connection_serves_the_next_request(server):
    with _client(SharedTransport()) as client:
        ports = {client.get(f"http://127.0.0.1:{server.port}/echo").json()["port"] for _ in range(5)}
    assert len(ports) == 1


def test_a_chunked_answer_is_read_whole_and_its_connection_reused(server):
    with _client(SharedTransport()) as client:
        assert client.get(f"http://127.0.0.1:{server.port}/chunked").content == b"first second"
        client.get(f"http://127.0.0.1:{server.port}/echo")
    assert server.seen[0]["port"] == server.seen[1]["port"]


def test_a_streamed_request_body_goes_out_chunked(server):
    with _client(SharedTransport()) as client:
        answer = client.post(f"http://127.0.0.1:{server.port}/echo", content=iter([b"ab", b"", b"cd"]))
    assert answer.json()["body"] == "abcd"
    assert server.seen[0]["headers"]["Transfer-Encoding"] == "chunked"


def test_connection_close_and_http_1_0_answers_are_not_reused(serve):
    old = serve("HTTP/1.0")
    keep = serve()
    with _client(SharedTransport()) as client:
        for url in (f"http://127.0.0.1:{old.port}/echo", f"http://127.0.0.1:{keep.port}/close"):
            first, second = (client.get(url) for _ in range(2))
            assert first.status_code == second.status_code == 200
            assert first.json()["port"] != second.json()["port"]
        assert first.http_version == "HTTP/1.1"


def test_a_connection_the_server_closed_while_idle_is_replaced_not_reused(server):
    with _client(SharedTransport()) as client:
        first = client.get(f"http://127.0.0.1:{server.port}/then-close")
        assert server.closed.wait(5)
        second = client.get(f"http://127.0.0.1:{server.port}/echo")
    assert second.status_code == 200
    assert second.json()["port"] != first.json()["port"]


def test_an_answer_closed_before_its_end_closes_its_connection(server):
    with _client(SharedTransport()) as client:
        with client.stream("GET", f"http://127.0.0.1:{server.port}/large") as answer:
            assert next(answer.iter_raw())
        client.get(f"http://127.0.0.1:{server.port}/echo")
    assert server.seen[0]["port"] != server.seen[1]["port"]


def test_an_answer_left_unread_does_not_spoil_the_next_request(server):
    # The small body already sits in http.client's buffer, so the socket alone looks idle.
    with _client(SharedTransport()) as client:
        with client.stream("GET", f"http://127.0.0.1:{server.port}/echo"):
            pass
        assert client.get(f"http://127.0.0.1:{server.port}/echo").json()["path"] == "/echo"


def test_threads_sharing_the_transport_each_get_their_own_answer(server):
    transport = SharedTransport()
    failures: list[str] = []

    def work(thread: int) -> None:
        with _client(transport) as client:
            for n in range(25):
                body = f"{thread}-{n}"
                answer = client.post(f"http://127.0.0.1:{server.port}/echo", content=body.encode())
                if answer.json()["body"] != body:
                    failures.append(f"{body} got {answer.json()['body']}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(server.seen) == 200
    assert len({seen["port"] for seen in server.seen}) <= 8


def test_failures_are_raised_as_httpx_errors(server):
    with _client(SharedTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{free_port()}/")
        with pytest.raises(httpx.ReadTimeout):
            client.get(f"http://127.0.0.1:{server.port}/slow", timeout=httpx.Timeout(5.0, read=0.1))
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"http://127.0.0.1:{server.port}/truncated")
        with pytest.raises(httpx.UnsupportedProtocol):
            client.get("ftp://127.0.0.1/")
        # Still usable after every one of them.
        assert client.get(f"http://127.0.0.1:{server.port}/echo").status_code == 200


def test_a_header_that_would_split_the_request_is_refused_unsent(server):
    with _client(SharedTransport()) as client:
        with pytest.raises(httpx.LocalProtocolError):
            client.get(f"http://127.0.0.1:{server.port}/echo", headers={"x-evil": "a\r\nInjected: 1"})
        assert client.get(f"http://127.0.0.1:{server.port}/echo").status_code == 200
    assert [seen["path"] for seen in server.seen] == ["/echo"]
    assert all("Injected" not in seen["headers"] for seen in server.seen)


# TLS


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(subject: str, issuer: str, public_key, signing_key, extensions) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, str]:
    """A CA, and two certificates it signed: one for 127.0.0.1 and localhost, one for another name."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(
        "opcancel test CA", "opcancel test CA", ca_key.public_key(), ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False,
            ), True),
            (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        ],
    )  # fmt: skip
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for label, names in (
        ("loopback", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
        ("elsewhere", [x509.DNSName("elsewhere.invalid")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate(
            label, "opcancel test CA", key.public_key(), ca_key,
            [
                (x509.SubjectAlternativeName(names), False),
                (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
                (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
            ],
        )  # fmt: skip
        paths[f"{label}-cert"] = directory / f"{label}-cert.pem"
        paths[f"{label}-key"] = directory / f"{label}-key.pem"
        paths[f"{label}-cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        paths[f"{label}-key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return {name: str(path) for name, path in paths.items()}


def _tls_serving(serve, certificates, label: str) -> _Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates[f"{label}-cert"], certificates[f"{label}-key"])
    return serve(tls=context)


@pytest.fixture
def tls_server(serve, certificates) -> _Server:
    return _tls_serving(serve, certificates, "loopback")


def test_https_verifies_the_server_and_reuses_the_connection(tls_server, certificates):
    trusting_the_test_ca = ssl.create_default_context(cafile=certificates["ca"])
    with _client(SharedTransport(verify=trusting_the_test_ca)) as client:
        answers = [client.get(f"https://127.0.0.1:{tls_server.port}/echo") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert len({answer.json()["port"] for answer in answers}) == 1


def test_https_to_a_server_the_default_trust_store_does_not_know_is_refused(tls_server):
    with _client(SharedTransport()) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(f"https://127.0.0.1:{tls_server.port}/echo")
    assert tls_server.seen == []


def test_https_to_a_server_whose_certificate_names_another_host_is_refused(serve, certificates):
    elsewhere = _tls_serving(serve, certificates, "elsewhere")
    trusting = SharedTransport(verify=ssl.create_default_context(cafile=certificates["ca"]))
    with _client(trusting) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(f"https://127.0.0.1:{elsewhere.port}/echo")
    assert elsewhere.seen == []


def test_plain_http_never_loads_a_ca_bundle_and_https_still_verifies(server, tls_server, monkeypatch, tmp_path):
    # httpx reads SSL_CERT_FILE when it builds a verifying context: a missing file shows when that happens.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with _client(SharedTransport()) as client:
        assert client.get(f"http://127.0.0.1:{server.port}/echo").status_code == 200
        with pytest.raises(FileNotFoundError):
            client.get(f"https://127.0.0.1:{tls_server.port}/echo")
    assert [seen["path"] for seen in server.seen] == ["/echo"] and tls_server.seen == []


def test_a_prepared_scheme_is_built_at_once_and_an_unprepared_one_on_first_use(monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    SharedTransport(prepare=("http",))  # no CA bundle to load: nothing fails
    with pytest.raises(FileNotFoundError):
        SharedTransport(prepare=("https",))


def test_the_function_prepares_the_schemes_its_api_and_pubsub_calls_use(monkeypatch, tmp_path):
    # Prepared at start-up, so gunicorn's master builds them before forking; the CA bundle only where
    # a request's calls are https (SSL_CERT_FILE, which httpx reads then, shows when that happens).
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    local = Settings(project="p", auth="anonymous", store="memory", api_endpoint="http://127.0.0.1:9")
    build_pipeline(dataclasses.replace(local, pubsub_emulator_host="127.0.0.1:8"))
    for https in (dataclasses.replace(local, api_endpoint=None, pubsub_emulator_host="127.0.0.1:8"), local):
        with pytest.raises(FileNotFoundError):
            build_pipeline(https)
