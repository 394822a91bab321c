"""The certificates ``facescan serve`` trusts when it connects out over https: media_url
downloads (``facescan_api.media``) and callback deliveries (``facescan_api.callbacks``).

The public certificate authorities certifi ships (what httpx trusts by default), plus
those of ``--ca-file`` (FACESCAN_CA_FILE): a PEM bundle, for a photo manager whose
certificate an organisation's own CA signed. The environment's SSL_CERT_FILE is not read:
the clients ignore the environment (no proxy variables either), so what is trusted is
what the server was started with. Built once, at start; a file that cannot be read or
holds no certificate stops the server with the reason.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx


class TrustError(Exception):
    """The --ca-file cannot be used (the message says why)."""


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The context the server's outgoing https connections verify with."""
    context = httpx.create_ssl_context(trust_env=False)
    if ca_file is None:
        return context
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:  # before OSError, its base class
        raise TrustError(
            f"--ca-file {ca_file}: not a PEM file of CA certificates ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise TrustError(f"--ca-file {ca_file}: {exc.strerror or exc}") from exc
    return context
