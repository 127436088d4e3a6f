"""Which TCP peer sent a request: the socket address of an ASGI scope against configured networks.

Used for ``auth.trusted_proxies`` (whose forwarded-for header is believed) and ``sso.proxies``
(whose sign-on headers are believed). Only the socket peer counts, never a header.
"""

import ipaddress

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


class NetworkError(ValueError):
    """A configured proxy entry that is not one address or an exact network; ``str()`` says why
    (config validation puts the key and the entry before it)."""


def network(entry):
    """One ``ipaddress`` network from an address or CIDR string (``"127.0.0.1"``, ``"10.0.0.0/8"``,
    ``"::1"``). An IPv4-mapped entry (``::ffff:10.0.0.7``) becomes its IPv4 network, as peers are
    compared (:func:`peer_in`). Raises :class:`NetworkError` for text that is neither, for an
    address with a prefix (``127.0.0.2/8`` would silently trust all of 127.0.0.0/8) and for a
    network of every address (``0.0.0.0/0``, ``::/0``): these lists say whom to believe."""
    text = str(entry).strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise NetworkError("is not an address or network")
    if net.prefixlen == 0:
        raise NetworkError("trusts every address; list the proxy's own address (or its network)")
    try:
        ipaddress.ip_network(text)  # strict: the address part must be the network's own
    except ValueError:
        raise NetworkError(f"has host bits set (did you mean {text.split('/')[0]}/{net.max_prefixlen} or {net}?)")
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        net = ipaddress.ip_network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def networks(entries):
    """``[ipaddress network]`` from addresses or CIDR strings, each read by :func:`network`
    (raises :class:`NetworkError`; config validation names the key)."""
    return [network(entry) for entry in entries or ()]


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
