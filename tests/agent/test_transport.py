"""How the agent reaches the coordinator: never plain http to another machine unless told, TLS with the site's
CA bundle, and a client certificate for a server that requires mutual TLS."""

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sites.agent.__main__ import main
from sites.agent.client import AgentClient, AgentError, Transport

ME = {"site": {"id": 1, "code": "amc", "name": "Amsterdam UMC"}, "token": {"prefix": "ab12cd34"}}


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(subject: str, key, issuer_key, issuer: x509.Name | None, *, ca: bool = False, server: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer or _name(subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert, key) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A private CA, the coordinator's certificate for 127.0.0.1 and a site agent's client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("Consortium test CA", ca_key, ca_key, None, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return {"ca": folder / "ca.pem",
            "server": _write(folder / "server.pem", _issue("127.0.0.1", server_key, ca_key, ca.subject, server=True),
                             server_key),
            "client": _write(folder / "client.pem", _issue("agent amc", client_key, ca_key, ca.subject), client_key)}


@pytest.fixture
def mtls_server(pki) -> Iterator[str]:
    """An HTTPS coordinator stand-in that refuses any client without a certificate from the CA."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(ME).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"])
    context.load_verify_locations(pki["ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_agent_with_its_client_certificate_talks_to_a_server_that_requires_one(mtls_server, pki):
    client = AgentClient(mtls_server, "cst_x", max_attempts=1, timeout=5,
                         transport=Transport(ca_bundle=str(pki["ca"]), client_cert=str(pki["client"])))
    assert client.me()["site"]["code"] == "amc"


def test_without_a_client_certificate_the_agent_says_tls_failed(mtls_server, pki):
    client = AgentClient(mtls_server, "cst_x", max_attempts=1, timeout=5,
                         transport=Transport(ca_bundle=str(pki["ca"])))
    with pytest.raises(AgentError, match="TLS|did not answer"):
        client.me()


def test_a_server_certificate_from_an_unknown_authority_is_refused(mtls_server, pki):
    client = AgentClient(mtls_server, "cst_x", max_attempts=1, timeout=5,
                         transport=Transport(client_cert=str(pki["client"])))
    with pytest.raises(AgentError, match="TLS with .* failed: .*CERTIFICATE_VERIFY_FAILED"):
        client.me()


def test_plain_http_is_refused_except_to_this_machine():
    with pytest.raises(AgentError, match="Refusing plain http to consortium.example.org"):
        AgentClient("http://consortium.example.org", "cst_x")
    AgentClient("http://127.0.0.1:8000", "cst_x")
    AgentClient("http://localhost:8000", "cst_x")
    AgentClient("http://consortium.example.org", "cst_x", transport=Transport(allow_insecure_http=True))


def test_the_command_line_refuses_plain_http_to_another_machine(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text("a,target\n1,0\n2,1\n")
    assert main(["--server", "http://10.1.2.3:8000", "--token", "cst_x", "--data", str(data), "--once"]) == 1
    assert "Refusing plain http to 10.1.2.3" in capsys.readouterr().err
