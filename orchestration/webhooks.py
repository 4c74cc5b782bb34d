"""Signed webhooks (Standard Webhooks) and the SSRF check of their targets.

Signature: `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the key
decoded from `whsec_<base64>`; the OpenAI SDK's `client.webhooks.unwrap` verifies it as it verifies
OpenAI's own. A target must resolve only to public addresses unless an allow-list admits it; the
delivery connects to the address that was checked, so a DNS answer cannot change between the two.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

SECRETS_BUCKET = "sy_webhook_secrets"


class WebhookTargetError(ValueError):
    pass


def parse_secret(secret: str) -> bytes:
    if not secret.startswith("whsec_"):
        raise ValueError("the secret must look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[6:], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret must look like whsec_<base64>") from None
    if len(key) < 16:
        raise ValueError("the secret must hold at least 16 bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(parse_secret(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def parse_allow_list(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


# Refused whatever this Python's `ipaddress` tables say (they changed in 3.11.10 and 3.12.4).
_NEVER = tuple(ipaddress.ip_network(net) for net in (
    "100.64.0.0/10",   # carrier-grade NAT
    "198.18.0.0/15",   # benchmarking
    "2001::/32",       # Teredo
    "2002::/16",       # 6to4: reaches the IPv4 address inside it
    "64:ff9b:1::/48",  # local-use NAT64
    "fc00::/7",        # unique local
    "fec0::/10",       # site-local (deprecated, still routed inside some sites)
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):  # these two reach the IPv4 address they carry: judge that
        if ip.ipv4_mapped is not None:
            return _public(ip.ipv4_mapped)
        if ip in _NAT64:
            return _public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if any(ip in net for net in _NEVER):
        return False
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


async def check_target(url: str, allow: tuple = ()) -> tuple[str, int, str]:
    """Returns (host, port, address to connect to); raises WebhookTargetError if not allowed."""
    try:  # urlsplit refuses a broken IPv6 literal, `.port` a port that is not 0-65535
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookTargetError(f"the webhook url is malformed ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookTargetError("the webhook url must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise WebhookTargetError("the webhook url must not carry credentials")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):  # UnicodeError: not a valid host name (IDNA)
        raise WebhookTargetError(f"the webhook host {parts.hostname!r} does not resolve") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for ip in addresses:
        if not (_public(ip) or any(ip in net for net in allow)):
            raise WebhookTargetError(f"the webhook host {parts.hostname!r} resolves to a non-public address")
    return parts.hostname, port, str(addresses[0])
