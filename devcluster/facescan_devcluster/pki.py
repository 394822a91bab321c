"""Certificates and credentials of a dev cluster, made with the openssl command line.

Called by controlplane.up(): a CA, the API server's serving certificate for 127.0.0.1 and
localhost, a service-account signing key pair, and random bearer tokens (one per user;
no default password anywhere). Every secret file is written mode 0600.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "3650"


@dataclass(frozen=True)
class User:
    """One identity of the token file: name, groups, and its random token."""

    name: str
    groups: tuple[str, ...]
    token: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """CA, serving certificate and service-account keys under ``pki`` (idempotent)."""
    pki.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = os.umask(0o077)
    try:
        if not (pki / "ca.crt").exists():
            _openssl("genrsa", "-out", str(pki / "ca.key"), "2048")
            _openssl(
                "req", "-x509", "-new", "-key", str(pki / "ca.key"), "-days", DAYS,
                "-subj", "/CN=facescan-dev-cluster-ca", "-out", str(pki / "ca.crt"),
            )  # fmt: skip
        if not (pki / "apiserver.crt").exists():
            ext = pki / "apiserver.ext"
            ext.write_text(
                "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
                "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
                "extendedKeyUsage=serverAuth\n"
            )
            _openssl("genrsa", "-out", str(pki / "apiserver.key"), "2048")
            _openssl(
                "req", "-new", "-key", str(pki / "apiserver.key"), "-subj", "/CN=kube-apiserver",
                "-out", str(pki / "apiserver.csr"),
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"),
                "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", DAYS,
                "-extfile", str(ext), "-out", str(pki / "apiserver.crt"),
            )  # fmt: skip
        if not (pki / "sa.key").exists():
            _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
            _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    finally:
        os.umask(old)
    (pki / "ca.crt").chmod(0o644)  # public: every client reads it


def make_users(names: dict[str, tuple[str, ...]]) -> list[User]:
    """A fresh random token for each user name (with its groups)."""
    return [User(name, groups, secrets.token_urlsafe(32)) for name, groups in names.items()]


def write_token_file(path: Path, users: list[User]) -> None:
    """The API server's --token-auth-file: token,user,uid,"group1,group2"."""
    lines = [f'{u.token},{u.name},{u.name},"{",".join(u.groups)}"' for u in users]
    write_private(path, "\n".join(lines) + "\n")


def kubeconfig(server: str, ca: Path, user: User, namespace: str = "default") -> str:
    """A kubeconfig for one user of the cluster (CA-verified HTTPS, bearer token)."""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: dev-cluster\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: {user.name}\n  user:\n    token: {user.token}\n"
        "contexts:\n- name: dev-cluster\n  context:\n    cluster: dev-cluster\n"
        f"    user: {user.name}\n    namespace: {namespace}\n"
        "current-context: dev-cluster\n"
    )


def write_private(path: Path, text: str) -> None:
    """A file only its owner may read (a token, a kubeconfig)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
