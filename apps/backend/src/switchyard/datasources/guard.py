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


NAT64_NETWORKS: Final = (
    ipaddress.ip_network("64:ff9b::/96"),  # well-known prefix (RFC 6052)
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use prefix (RFC 8215)
)
IPV4_COMPATIBLE: Final = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")
BROADCAST: Final = ipaddress.ip_address("255.255.255.255")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, compatible, Teredo), which
    is where a packet to it may end up."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in (*NAT64_NETWORKS, IPV4_COMPATIBLE)):
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        return embedded if int(address) > 1 else None  # :: and ::1 are IPv6's own
    return None


def refusal(address: IPAddress) -> str | None:
    """Why `address` may not be reached, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            reason = refusal(embedded)
            return f"{reason} inside an IPv6 address" if reason else None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or (
        isinstance(address, ipaddress.IPv4Address) and address in THIS_NETWORK
    ):
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address == BROADCAST:
        return "a broadcast address"
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
                # The address itself is not named: a refusal must not map internal names.
                raise RefusedHostError(
                    f"{host!r} resolves to {reason}; connectivity tests may not reach it "
                    "(DATA_SOURCE_ALLOW_LOCAL_HOSTS allows it)"
                )
    return str(addresses[0])
