"""Certificates for TLS tests, made with the openssl command: a CA, and a certificate it signed.

    files = make_certificates(tmp_path / "tls")      # TlsFiles(ca, cert, key)

The certificate names 127.0.0.1 and localhost, so hostname checks pass on
loopback; the same certificate serves the nodes and the clients (mutual TLS).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from expiryd.devtools.localcluster import TlsFiles


def make_certificates(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, request = directory / "node.pem", directory / "node.key", directory / "node.csr"
    extensions = directory / "node.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth, clientAuth\n")
    _openssl(
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "2",
        "-subj",
        "/CN=expiryd test CA",
    )
    _openssl("req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1")
    _openssl(
        "x509",
        "-req",
        "-in",
        request,
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        extensions,
    )
    return TlsFiles(ca=ca, cert=cert, key=key)


def _openssl(*arguments: str | Path) -> None:
    subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True, timeout=60)
