"""Webhook delivery: HMAC-SHA256 signatures, the SSRF guard, and sending one delivery.

Every request carries::

    X-Riskstream-Timestamp: <unix seconds>
    X-Riskstream-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>
    X-Riskstream-Alert-Id:  <alert id>   (idempotency key: a retried or replayed alert has the same id)

Receivers check with :func:`verify_signature` (constant-time compare, bounded clock skew against replays).

The SSRF guard resolves the target host and refuses private, loopback, link-local, multicast, reserved,
unspecified and unique-local addresses (IPv4 and IPv6, including IPv4-mapped IPv6) unless the host or a CIDR
containing the address is in the explicit allow-list. It runs before every attempt (a name that resolved to a
public address yesterday may resolve to 10.0.0.1 today), the request goes to the address that was checked (no
second lookup by the HTTP client), and redirects are never followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

SIGNATURE_HEADER = "X-Riskstream-Signature"
TIMESTAMP_HEADER = "X-Riskstream-Timestamp"
ALERT_ID_HEADER = "X-Riskstream-Alert-Id"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class BlockedTargetError(Exception):
    """The webhook target resolves to an address the SSRF guard refuses (or does not resolve)."""


class DeliveryError(Exception):
    """A delivery attempt failed (network error or non-2xx answer); retried from the store."""


# ---- signatures -----------------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value ``v1=<hex>`` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify_signature(
    secret: str,
    timestamp: str | int,
    body: bytes,
    signature: str,
    tolerance: float = 300.0,
    *,
    now: float | None = None,
) -> bool:
    """Receiver side: True when ``signature`` (the X-Riskstream-Signature header) is valid for ``body`` and the
    timestamp (X-Riskstream-Timestamp) is within ``tolerance`` seconds of now. Never raises on bad input."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    expected = sign(secret, ts, body)
    return hmac.compare_digest(expected.encode(), signature.strip().encode())


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes signed and sent (compact, key-sorted JSON)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


# ---- SSRF guard -----------------------------------------------------------------------------------------------


def is_forbidden_address(addr: IPAddress) -> bool:
    """True for every range a webhook must not reach by default."""
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped or addr.sixtofour
        if mapped is not None and is_forbidden_address(mapped):
            return True
        if addr in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 to an IPv4 address
            return is_forbidden_address(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or (isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local)
        or not addr.is_global
    )


@dataclass(frozen=True)
class AllowList:
    """Hosts and CIDRs that may be reached even though they are private or loopback (tests, development)."""

    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        hosts: set[str] = set()
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(nets))

    def allows(self, host: str, addr: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        return any(addr.version == net.version and addr in net for net in self.networks)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class CheckedTarget:
    url: str
    host: str
    port: int
    address: str


def check_target(url: str, allow: AllowList, resolver: Resolver = system_resolver) -> CheckedTarget:
    """Resolve the URL's host and refuse it unless every address it resolves to is public or allow-listed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedTargetError(f"not an http(s) URL: {url!r}")
    if parts.username or parts.password:
        raise BlockedTargetError("credentials in webhook URLs are refused")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    try:
        addresses = [str(literal)] if literal is not None else resolver(host, port)
    except OSError as exc:
        raise BlockedTargetError(f"cannot resolve {host!r}: {exc}") from exc
    if not addresses:
        raise BlockedTargetError(f"{host!r} resolves to no address")
    for text in addresses:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
        if is_forbidden_address(addr) and not allow.allows(host, addr):
            raise BlockedTargetError(f"{host!r} resolves to {addr}: private/loopback/reserved, not allow-listed")
    return CheckedTarget(url=url, host=host, port=port, address=addresses[0])


# ---- sending --------------------------------------------------------------------------------------------------


def _pinned_url(target: CheckedTarget) -> str:
    """The URL with the host replaced by the checked address, so the client cannot resolve the name again."""
    parts = urlsplit(target.url)
    addr = ipaddress.ip_address(target.address.split("%", 1)[0])
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    netloc = f"{host}:{target.port}"
    return parts._replace(netloc=netloc).geturl()


def send(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    alert_id: str,
    secret: str,
    allow: AllowList,
    resolver: Resolver = system_resolver,
    now: float | None = None,
) -> int:
    """One signed POST to ``url`` after the SSRF check; returns the HTTP status or raises.

    :class:`BlockedTargetError` is permanent (not retried); :class:`DeliveryError` is retried by the delivery loop.
    """
    target = check_target(url, allow, resolver)
    body = encode_body(payload)
    ts = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "riskstream-alerts/1",
        "Host": target.host if target.port in (80, 443) else f"{target.host}:{target.port}",
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, ts, body),
        ALERT_ID_HEADER: alert_id,
    }
    pinned = _pinned_url(target)
    extensions = {"sni_hostname": target.host} if urlsplit(url).scheme == "https" else {}
    try:
        response = client.post(pinned, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if response.is_redirect:
        raise DeliveryError(f"redirect {response.status_code} refused (webhooks never follow redirects)")
    if not response.is_success:
        raise DeliveryError(f"HTTP {response.status_code}")
    return response.status_code


def make_client(timeout: float) -> httpx.Client:
    """An httpx client that never follows redirects and does not read proxy settings from the environment."""
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
