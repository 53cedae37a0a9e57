"""The client's IP address, as far as it can be trusted, for login throttling.

The socket peer is the client unless it is one of the configured trusted proxies
(``CRM_TRUSTED_PROXIES``, addresses or CIDRs). Only then is ``X-Forwarded-For`` read, from
the right (the hop nearest to us) leftwards, skipping trusted proxies: the first address
that is not a trusted proxy is the client. Everything left of it was written by the client
itself and proves nothing. With no trusted proxies configured the header is ignored.

IPv6 clients are keyed by their /64 (one subscriber usually holds a whole /64 and can
rotate through it at will); IPv4-mapped IPv6 addresses count as the IPv4 address.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from starlette.requests import Request

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def _parse(value: str) -> Address | None:
    value = value.strip()
    if value.startswith("["):  # [v6]:port
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # v4:port
        value = value.partition(":")[0]
    try:
        address = ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: Sequence[Network]) -> bool:
    return any(address in network for network in proxies)


def client_address(request: Request, trusted_proxies: Sequence[Network]) -> Address | None:
    peer = _parse(request.client.host) if request.client else None
    if peer is None or not _trusted(peer, trusted_proxies):
        return peer
    hops = [
        hop for header in request.headers.getlist("x-forwarded-for") for hop in header.split(",")
    ]
    current = peer
    for raw in reversed(hops):
        hop = _parse(raw)
        if hop is None:
            break  # garbage: the chain is broken here; the last proxy we trust stands
        if not _trusted(hop, trusted_proxies):
            return hop
        current = hop
    return current


def client_key(request: Request, trusted_proxies: Sequence[Network]) -> str:
    """The throttle key part for the client: an IPv4 address, an IPv6 /64, or ``unknown``."""
    address = client_address(request, trusted_proxies)
    if address is None:
        return "unknown"
    if isinstance(address, IPv6Address):
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)
