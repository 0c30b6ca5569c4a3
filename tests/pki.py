"""A certificate authority made for one test run (trustme), its server and client
certificates written as PEM files, and TLS contexts for the servers the tests run."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, a server certificate for 127.0.0.1/localhost, a client certificate,
    and a second CA that signed nothing of ours (a server it vouches for is not trusted)."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca_file)
        return context


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("payment-worker@example.test")
    paths = {
        name: directory / f"{name}.pem"
        for name in ("ca", "server", "server-key", "client", "client-key", "other-ca")
    }
    ca.cert_pem.write_to_path(paths["ca"])
    other.cert_pem.write_to_path(paths["other-ca"])
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["server"], append=True)
    server.private_key_pem.write_to_path(paths["server-key"])
    for blob in client.cert_chain_pems:
        blob.write_to_path(paths["client"], append=True)
    client.private_key_pem.write_to_path(paths["client-key"])
    return Pki(
        paths["ca"],
        paths["server"],
        paths["server-key"],
        paths["client"],
        paths["client-key"],
        paths["other-ca"],
    )
