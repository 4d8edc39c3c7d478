"""The server-side request forgery guard of connectivity tests.

A tenant names a host; before anything connects, every address it resolves to is checked.
Loopback, link-local (which holds most cloud metadata endpoints), unspecified, multicast
and known metadata addresses are refused unless DATA_SOURCE_ALLOW_LOCAL_HOSTS is set.
Private ranges are allowed: a database inside the same network is the normal case. The
connection then goes to the checked address, so a second resolution cannot swap it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "fd00:ec2::254",  # AWS over IPv6
    )
)


class RefusedHostError(Exception):
    """The host resolves to an address a connectivity test may not reach."""


class UnresolvableHostError(Exception):
    pass


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be reached, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    return None


async def resolve(host: str, port: int, *, allow_local: bool) -> str:
    """The address to connect to: the first one `host` resolves to, once all are checked."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableHostError(f"{host!r} does not resolve: {exc.strerror}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise UnresolvableHostError(f"{host!r} does not resolve")
    if not allow_local:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise RefusedHostError(
                    f"{host!r} resolves to {address}, {reason}; connectivity tests may not "
                    "reach it (DATA_SOURCE_ALLOW_LOCAL_HOSTS allows it)"
                )
    return str(addresses[0])
