"""Which TCP peer sent a request: the socket address of an ASGI scope against configured networks.

Used for ``auth.trusted_proxies`` (whose forwarded-for header is believed) and ``sso.proxies``
(whose sign-on headers are believed). Only the socket peer counts, never a header.
"""

import ipaddress


def networks(entries):
    """``[ipaddress network]`` from addresses or CIDR strings (``"127.0.0.1"``, ``"10.0.0.0/8"``,
    ``"::1"``); raises ``ValueError`` for an entry that is neither (config validation names it)."""
    return [ipaddress.ip_network(str(entry).strip(), strict=False) for entry in entries or ()]


def peer_in(scope, nets):
    """True when the socket peer of ASGI ``scope`` (``scope["client"][0]``) is in one of ``nets``;
    an IPv4-mapped IPv6 peer (``::ffff:127.0.0.2``) counts as its IPv4 address. False for a
    missing or unparsable peer (a Unix socket)."""
    peer = (scope.get("client") or ("",))[0]
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    return any(address in net for net in nets)
