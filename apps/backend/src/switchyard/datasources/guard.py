"""The server-side request forgery guard of connectivity tests.

A tenant names a host; before anything connects, every address it resolves to is checked.
Loopback, link-local (which holds most cloud metadata endpoints), unspecified, multicast
and known metadata addresses are refused unless DATA_SOURCE_ALLOW_LOCAL_HOSTS is set.
Private and other non-public ranges (RFC 1918, CGNAT, ULA, documentation, reserved) are
refused in production, where a tenant would otherwise map the platform's own network, unless
DATA_SOURCE_ALLOWED_NETWORKS names them (a self-hosted database's network);
DATA_SOURCE_ALLOW_PRIVATE_NETWORKS overrides the default either way. The connection then goes
to the checked address, so a second resolution cannot swap it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from switchyard.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Reach:
    """Where connectivity tests may connect: local addresses, non-public ones, and networks
    always allowed (which still exclude cloud metadata addresses)."""

    local: bool = False
    private: bool = True
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> Reach:
        return cls(
            local=settings.data_source_allow_local_hosts,
            private=settings.data_source_private_networks_allowed,
            networks=tuple(
                ipaddress.ip_network(entry, strict=False)
                for entry in settings.data_source_allowed_networks
            ),
        )


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


def refusal(address: IPAddress, reach: Reach = Reach()) -> str | None:
    """Why `address` may not be reached, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            reason = refusal(embedded, reach)
            return f"{reason} inside an IPv6 address" if reason else None
    if address in METADATA_ADDRESSES:
        return None if reach.local else "a cloud metadata address"
    if any(address in network for network in reach.networks):
        return None
    local = _local(address)
    if local is not None:
        return None if reach.local else local
    if not reach.private and not address.is_global:
        return "a private or otherwise non-public address"
    return None


def _local(address: IPAddress) -> str | None:
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


async def resolve(host: str, port: int, *, reach: Reach) -> str:
    """The address to connect to: the first one `host` resolves to, once all are checked."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableHostError(f"{host!r} does not resolve: {exc.strerror}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise UnresolvableHostError(f"{host!r} does not resolve")
    for address in addresses:
        reason = refusal(address, reach)
        if reason is not None:
            # The address itself is not named: a refusal must not map internal names.
            allows = (
                "DATA_SOURCE_ALLOWED_NETWORKS names networks they may reach"
                if reason.startswith("a private")
                else "DATA_SOURCE_ALLOW_LOCAL_HOSTS allows it"
            )
            raise RefusedHostError(
                f"{host!r} resolves to {reason}; connectivity tests may not reach it ({allows})"
            )
    return str(addresses[0])
