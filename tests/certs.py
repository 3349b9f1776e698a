"""Self-signed certificates for TLS tests, made with the openssl command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for the DNS name `name` only, and its key, in `folder` (the test is skipped where
    there is no openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}"]
    names = ["-addext", f"subjectAltName=DNS:{name}"]
    out = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(["openssl", *request, *names, *out], check=True, capture_output=True)
    return cert, key
