"""Test certificates and signing identities (Redis TLS, Celery message signing), and a worker
that runs only signed messages: shared by the security tests and the chat-ops bot's."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testkit.faults import wait_until
from testkit.site import ROOT, WorkerProcess


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject: str, key, issuer: str, issuer_key, *, serial: int | None = None, ca=False, server=False,
          client=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(serial or x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory, name: str, key=None, cert=None) -> dict:
    out = {}
    if key is not None:
        out["key"] = str(directory / f"{name}.key")
        with open(out["key"], "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        os.chmod(out["key"], 0o600)
    if cert is not None:
        out["cert"] = str(directory / f"{name}.crt")
        with open(out["cert"], "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    return out


def make_pki(d: Path) -> dict:
    """A CA with a Redis server and a worker client certificate; signing identities for the worker,
    the chat-ops bot, a stranger, and a forgery of the bot's certificate (same issuer and serial),
    written into `d`; the trusted store holds the worker's and the bot's certificates."""
    ca_key = _key()
    ca = _cert("taiga-backup test CA", ca_key, "taiga-backup test CA", ca_key, ca=True)
    out = {"ca": _write(d, "ca", cert=ca)["cert"]}
    server_key, client_key = _key(), _key()
    out["server"] = _write(d, "server", server_key, _cert("redis", server_key, "taiga-backup test CA", ca_key, server=True))
    out["client"] = _write(d, "client", client_key, _cert("taiga-backup", client_key, "taiga-backup test CA", ca_key,
                                                          client=True))
    for name in ("worker", "bot", "stranger"):
        key = _key()
        out[name] = _write(d, name, key, _cert(f"taiga-backup {name}", key, f"taiga-backup {name}", key, serial=1000))
    bot_cert = x509.load_pem_x509_certificate(open(out["bot"]["cert"], "rb").read())
    forger = _key()  # the bot's name and serial, the forger's key
    out["forged"] = _write(d, "forged", forger, _cert("taiga-backup bot", forger, "taiga-backup bot", forger,
                                                      serial=bot_cert.serial_number))
    store = d / "trusted"
    store.mkdir()
    for name in ("worker", "bot"):
        (store / f"{name}.crt").write_bytes(open(out[name]["cert"], "rb").read())
    out["store"] = str(store)
    return out



def signing_env(pki, who: str, store: str | None = None) -> dict:
    return {"CELERY_SECURITY_KEY_FILE": pki[who]["key"], "CELERY_SECURITY_CERT_FILE": pki[who]["cert"],
            "CELERY_SECURITY_CERT_STORE": store or pki["store"]}


def start_signed_worker(site, pki, tmp_path, name: str = "signed-worker") -> WorkerProcess:
    """A worker that runs only signed messages. Readiness from its log: a ping is a message too,
    and this test process does not sign."""
    env = {**os.environ, **site.env, **signing_env(pki, "worker"), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    worker = WorkerProcess(env, False, tmp_path / f"{name}.log")
    try:
        wait_until(lambda: " ready." in worker.output() or worker.proc.poll() is not None, 60, "the worker")
        assert worker.proc.poll() is None, worker.output()
    except BaseException:
        worker.stop()
        raise
    return worker
