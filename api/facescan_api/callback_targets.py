"""Where callbacks may go: the callback host allow-list, checked when a job is submitted
and again, with the host resolved, before every delivery (no SSRF through callback_url).

Called by ``facescan_api.jobs`` (POST /process: :func:`check_callback_url` raises
``MediaRefused``, a typed 403/422) and ``facescan_api.callbacks`` (each delivery:
:func:`resolve` gives the addresses to connect to, or raises :class:`TargetRefused`).

Rules: an http(s) URL without credentials whose host is on the list
(``--callback-host``): an exact name or address, ``*.example.com`` (any name below
example.com) or ``*`` (any host). At delivery the host is resolved once, every address
is checked, and the delivery connects to those addresses, in the resolver's order until
one connects (the URL's host still in Host and TLS SNI, the certificate checked against
it), so the name cannot be re-resolved elsewhere between the check and the connection.
An address that is not public (loopback, private, link-local such as the cloud metadata
169.254.169.254, shared, reserved, multicast) is refused unless the URL's host is on the
list exactly, as written: a wildcard never reaches an internal address. Redirects are
never followed (``facescan_api.callbacks``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from facescan_api.media import MediaRefused

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """A delivery's target breaks the rules (no attempt is made; it is given up)."""


@dataclass(frozen=True)
class CallbackRules:
    """The allow-list, lower-cased: exact hosts, ``*.suffix`` patterns, or ``*``."""

    hosts: frozenset[str]

    def allows(self, host: str) -> bool:
        host = host.lower()
        if self.exact(host) or "*" in self.hosts:
            return True
        return _is_name(host) and any(
            p.startswith("*.") and host.endswith(p[1:]) for p in self.hosts
        )

    def exact(self, host: str) -> bool:
        """Whether ``host`` is on the list as written (what reaches internal addresses)."""
        return host.lower() in self.hosts


@dataclass(frozen=True)
class Target:
    """A delivery's connection: the URLs to request, one per address of the host (the
    address in place of the host; tried in order until one connects), and what the
    request must carry to name the original host."""

    urls: tuple[httpx.URL, ...]
    headers: dict[str, str]
    extensions: dict[str, str]


def check_callback_url(url: str, rules: CallbackRules) -> httpx.URL:
    """The URL if it may be a job's callback_url; MediaRefused (422: not an http(s)
    URL, credentials; 403: a host not allowed, an internal address not allowed exactly)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise MediaRefused(422, "url_not_allowed", f"callback_url is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise MediaRefused(
            422, "url_not_allowed", "callback_url must be an http(s) URL with a host"
        )
    if parsed.userinfo:
        raise MediaRefused(
            422, "url_not_allowed", "callback_url must not carry credentials (user:password@)"
        )
    if not rules.allows(parsed.host):
        allowed = ", ".join(sorted(rules.hosts)) or "none: --callback-host is not set"
        raise MediaRefused(
            403, "url_not_allowed", f"callback_url host {parsed.host!r} is not allowed ({allowed})"
        )
    literal = _address(parsed.host)
    if literal is not None and not rules.exact(parsed.host):
        why = internal(literal)
        if why is not None:
            raise MediaRefused(403, "url_not_allowed", _internal_message(parsed.host, literal, why))
    return parsed


async def resolve(url: str, rules: CallbackRules) -> Target:
    """Where to deliver to ``url`` now: checked again (the list may have changed since
    the job came), resolved, every address public unless the host is listed exactly.
    TargetRefused for what the rules refuse; OSError when the name does not resolve."""
    try:
        parsed = check_callback_url(url, rules)
    except MediaRefused as exc:
        raise TargetRefused(exc.detail) from exc
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
    addresses = [_plain(ipaddress.ip_address(info[4][0])) for info in infos]
    if not addresses:
        raise OSError(f"{parsed.host} resolves to no address")
    if not rules.exact(parsed.host):
        for address in addresses:
            why = internal(address)
            if why is not None:
                raise TargetRefused(_internal_message(parsed.host, address, why))
    host_header = parsed.netloc.decode("ascii")
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    urls = tuple(parsed.copy_with(host=str(a)) for a in dict.fromkeys(addresses))
    return Target(urls, {"Host": host_header}, extensions)


def internal(address: IpAddress) -> str | None:
    """Why ``address`` is not a public one (a word for messages), or None if it is."""
    address = _plain(address)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved or shared"
    return None


def _internal_message(host: str, address: IpAddress, why: str) -> str:
    return (
        f"callback_url host {host!r} is at {address}, a {why} address: allowed only when "
        f"--callback-host lists {host!r} exactly"
    )


def _plain(address: IpAddress) -> IpAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _address(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_name(host: str) -> bool:
    return _address(host) is None
