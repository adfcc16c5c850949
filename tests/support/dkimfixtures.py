"""DKIM/ARC test material: keys, signing, and the pytest fixtures for a local DNS.

Keys are RSA (2048 bits by default) made with the ``openssl`` command (installed with
Postfix, through ssl-cert; dkimpy's own ``dknewkey`` uses it too), so no Python crypto
package is needed. Ed25519 is not offered: dkimpy needs PyNaCl to sign or verify it.

Fixtures (import them into a test module, or into conftest.py)::

    from support.dkimfixtures import dkim_key, dns_server  # noqa: F401

    def test_pass(dns_server, dkim_key):
        dkim_key.publish(dns_server, "mairie-exemple.fr", "sel1")
        signed = sign_message(raw, dkim_key, "mairie-exemple.fr", "sel1")
        dnsfunc = make_dnsfunc(dns_server.resolver, timeout=2.0)
        assert verify_dkim(signed, dnsfunc, from_domain="mairie-exemple.fr")[0].result == "pass"

- ``dns_server`` (session): a running :class:`~support.dns.DnsServer`; tests add records
  with ``publish``/``add_txt`` under names of their own (use a unique selector per
  test: the server is shared);
- ``dkim_key`` / ``arc_key`` (session): two different RSA keys, made once per run.
"""

from __future__ import annotations

import base64
import functools
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from .dns import DnsServer

OPENSSL = "openssl"


@dataclass(frozen=True)
class DkimKey:
    """An RSA key pair for DKIM/ARC: ``private_pem`` (PKCS#8 PEM, what dkimpy and
    :class:`helpdesk_milter.auth.ArcSealer` take) and ``public_b64`` (the p= value)."""

    private_pem: bytes
    public_b64: str

    @property
    def txt(self) -> str:
        """The DNS TXT record value: ``v=DKIM1; k=rsa; p=...``."""
        return f"v=DKIM1; k=rsa; p={self.public_b64}"

    @staticmethod
    def record_name(domain: str, selector: str) -> str:
        return f"{selector}._domainkey.{domain}"

    def publish(self, server: DnsServer, domain: str, selector: str) -> str:
        """Serve this key's record at ``selector._domainkey.domain``; returns the name."""
        name = self.record_name(domain, selector)
        server.add_txt(name, self.txt)
        return name

    def write_private(self, path: str | Path) -> Path:
        """Write the private key (mode 0600) and return the path."""
        path = Path(path)
        path.write_bytes(self.private_pem)
        path.chmod(0o600)
        return path


def generate_rsa_key(bits: int = 2048) -> DkimKey:
    """A fresh RSA key pair, via ``openssl genpkey`` (about 0.1-0.5 s for 2048 bits)."""
    try:
        private = subprocess.run(
            [OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"],
            check=True, capture_output=True, timeout=60).stdout
        public_der = subprocess.run(
            [OPENSSL, "pkey", "-pubout", "-outform", "DER"], input=private,
            check=True, capture_output=True, timeout=60).stdout
    except FileNotFoundError:
        raise RuntimeError("the openssl command is needed to make test keys "
                           "(Debian package openssl)") from None
    return DkimKey(private, base64.b64encode(public_der).decode("ascii"))


@functools.cache
def shared_rsa_key(label: str, bits: int = 2048) -> DkimKey:
    """One key per ``label`` per test process (key generation is the slow part)."""
    return generate_rsa_key(bits)


def sign_message(raw: bytes, key: DkimKey, domain: str, selector: str, *,
                 include_headers: Sequence[str] | None = None,
                 canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
                 length: bool = False) -> bytes:
    """``raw`` with a DKIM-Signature by ``domain``/``selector`` prepended (dkim.sign).

    The default signs From, To, Subject, Date, Message-ID... (dkimpy's list of
    RFC 6376 recommended headers that are present) with relaxed/relaxed.
    """
    headers = [h.encode() for h in include_headers] if include_headers else None
    sig = dkim.sign(raw, selector.encode(), domain.encode(), key.private_pem,
                    canonicalize=canonicalize, include_headers=headers, length=length)
    return sig + raw


def message(*, from_addr: str = "Jean Dupont <jean.dupont@mairie-exemple.fr>",
            to: str = "alice@example.org", subject: str = "Imprimante en panne",
            body: str = "Bonjour,\r\n\r\nL'imprimante du secrétariat ne répond plus.\r\n",
            message_id: str = "<test-1@mairie-exemple.fr>",
            extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A small, valid, CRLF text/plain message (UTF-8, 8bit) to sign in tests."""
    lines = [f"From: {from_addr}", f"To: {to}", f"Subject: {subject}",
             "Date: Mon, 06 Jan 2025 10:00:00 +0100", f"Message-ID: {message_id}",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
             "Content-Transfer-Encoding: 8bit"]
    lines += [f"{name}: {value}" for name, value in extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


# --- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """dnsmasq on 127.0.0.1:<free port>, NXDOMAIN for every name it was not given;
    ``dns_server.resolver`` is the ``dns.resolver`` config value. Stopped at the end of
    the session. Fails (not skips) the test when dnsmasq cannot run."""
    server = DnsServer(tmp_path_factory.mktemp("dns"))
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.fail(f"cannot run the local DNS server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dkim_key() -> DkimKey:
    """An RSA-2048 key for the sender's DKIM signatures."""
    return shared_rsa_key("dkim")


@pytest.fixture(scope="session")
def arc_key() -> DkimKey:
    """An RSA-2048 key for ARC seals (ours and earlier hops')."""
    return shared_rsa_key("arc")
