"""``raygate serve`` over TLS: HTTPS and WSS, and client certificates when asked for."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import TOKEN, ServerProcess
from kgclient import KernelWS


def issue(name: str, ca: tuple | None, path_prefix, is_ca: bool = False) -> tuple:
    """A key and certificate for ``name``, signed by ``ca`` (or self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_key, issuer_name = (ca[0], ca[1].subject) if ca else (key, subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = f"{path_prefix}-{name}.crt", f"{path_prefix}-{name}.key"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return key, cert, cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    prefix = str(tmp_path_factory.mktemp("pki") / "t")
    ca = issue("raygate-test-ca", None, prefix, is_ca=True)
    server = issue("server", ca, prefix)
    client = issue("client", ca, prefix)
    return {"ca": ca[2], "cert": server[2], "key": server[3], "client": (client[2], client[3])}


def tls_server(start_server, pki: dict, *extra: str) -> ServerProcess:
    server: ServerProcess = start_server(
        "--default-launcher", "local", "--certfile", pki["cert"], "--keyfile", pki["key"], *extra
    )
    return server


def context(pki: dict, with_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if with_client_cert:
        ctx.load_cert_chain(*pki["client"])
    return ctx


async def test_https_and_wss(start_server, pki: dict) -> None:
    server = tls_server(start_server, pki)
    url = f"https://127.0.0.1:{server.port}"
    headers = {"Authorization": f"token {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, verify=context(pki, False)) as client:
        assert client.get("/api").status_code == 200
        r = client.post("/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kernel_id = r.json()["id"]
        ws = await websockets.connect(
            f"wss://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels",
            additional_headers=headers,
            ssl=context(pki, False),
        )
        out = await KernelWS(ws, False, "tls").execute("print('over tls')")
        assert out.stdout == "over tls\n"
        await ws.close()
        assert client.delete(f"/api/kernels/{kernel_id}").status_code == 204
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/api", timeout=5)


def test_client_certificates_required_with_a_client_ca(start_server, pki: dict) -> None:
    server = tls_server(start_server, pki, "--client-ca", pki["ca"])
    url = f"https://127.0.0.1:{server.port}/api"
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, verify=context(pki, False), timeout=5)
    headers = {"Authorization": f"token {TOKEN}"}
    assert httpx.get(url, verify=context(pki, True), headers=headers, timeout=5).status_code == 200


def test_tls_settings_are_checked_before_serving(tmp_path, refused_serve) -> None:
    for args, words in (
        (["--keyfile", "k.pem"], "need --certfile"),
        (["--certfile", str(tmp_path / "missing.pem")], "TLS file not found"),
    ):
        r = refused_serve("--default-launcher", "local", *args)
        assert r.exit_code == 2 and words in r.stderr, r.output
