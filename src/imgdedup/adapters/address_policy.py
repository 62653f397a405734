"""Which network addresses a `url` source may be fetched from.

Public unicast only: private, loopback, link-local, multicast, reserved, unspecified,
shared (CGNAT) and documentation ranges are refused, and so are IPv6 forms that carry an
IPv4 address (mapped, NAT64, 6to4) when the IPv4 address inside would be refused. The
deprecated IPv4-compatible form (`::a.b.c.d`), Teredo and local-use NAT64 are refused
outright: nothing public needs them, and their embedded address is ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address

_NOT_GLOBAL_V4 = (
    IPv4Network("100.64.0.0/10"),  # shared address space, CGNAT (RFC 6598)
    IPv4Network("192.0.0.0/24"),  # IETF protocol assignments; `ipaddress` misses parts of it
)
_IPV4_COMPATIBLE = IPv6Network("::/96")  # deprecated by RFC 4291; includes :: and ::1
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")  # RFC 8215: local use, embedding depends on the site
_SIX_TO_FOUR = IPv6Network("2002::/16")  # RFC 3056: the IPv4 address is bits 16..48
_TEREDO = IPv6Network("2001::/32")  # RFC 4380
_NOT_GLOBAL_V6 = (
    IPv6Network("fec0::/10"),  # site-local (deprecated, still routed inside some sites)
    IPv6Network("3fff::/20"),  # documentation (RFC 9637)
    IPv6Network("5f00::/16"),  # SRv6 segment identifiers (RFC 9602)
)


def _is_public_v4(ip: IPv4Address) -> bool:
    return (
        ip.is_global
        and not any(ip in network for network in _NOT_GLOBAL_V4)
        and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback or ip.is_link_local)
    )


def is_public_address(ip: IPAddress) -> bool:
    """True for an address on the public Internet that a fetch may connect to."""
    if isinstance(ip, IPv4Address):
        return _is_public_v4(ip)
    if ip.ipv4_mapped is not None:
        return _is_public_v4(ip.ipv4_mapped)
    if ip in _NAT64_WELL_KNOWN:
        return _is_public_v4(IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _SIX_TO_FOUR:
        embedded = ip.sixtofour
        return embedded is not None and _is_public_v4(embedded)
    if ip in _IPV4_COMPATIBLE or ip in _NAT64_LOCAL or ip in _TEREDO:
        return False
    if any(ip in network for network in _NOT_GLOBAL_V6):
        return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
        or ip.is_link_local or ip.is_site_local
    )


def looks_like_ip_literal(host: str) -> bool:
    """aiohttp's own test: such hosts are connected to as they are, never resolved.

    Kept identical so that every host aiohttp skips the resolver for is checked here.
    """
    return ":" in host or host.replace(".", "").isdigit()


@dataclass(frozen=True)
class AddressPolicy:
    """Decides per (address, port) whether a connection may be made.

    `exempt` lists `(address, port)` pairs treated as public; it is a seam for tests,
    which can only serve on loopback, and is empty in the service.
    """

    allow_private: bool = False
    exempt: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def allows(self, address: str, port: int) -> bool:
        if self.allow_private:
            return True
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        if (str(ip), port) in self.exempt:
            return True
        return is_public_address(ip)
