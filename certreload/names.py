"""libpq's host-name check (``sslmode=verify-full``), as PostgreSQL 14 and later do it.

OpenSSL's own host check (``X509_check_host``, what Python's ``ssl`` uses) disagrees with
libpq in several places, so certreload follows libpq's rules (fe-secure-openssl.c):

- The host is an IP address when it parses as IPv4 or IPv6; otherwise it is a DNS name.
- Every dNSName SAN is compared with the host text: equal ignoring case, or a wildcard
  ``*.rest`` whose ``rest`` ends the host and covers all but exactly one leading label.
  Only a whole leading ``*.`` label is a wildcard (``f*.example.com`` is not).
- Every iPAddress SAN is compared with the host's address, when the host is an address.
- The subject's first CN is checked (same rules as a dNSName) only when no SAN has the host's type:
  no dNSName SAN for a DNS host, no iPAddress SAN for an IP host.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class NameFacts:
    """What a leaf certificate offers for the name check."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[bytes, ...]  # packed: 4 or 16 bytes, as in the certificate
    common_name: str | None  # the subject's first CN: the only one libpq reads


def _wildcard_match(pattern: str, host: str) -> bool:
    if len(pattern) < 3 or not pattern.startswith("*."):
        return False
    if len(pattern) > len(host):
        return False
    start = len(host) - len(pattern) + 1  # where pattern[1:] begins inside host
    if pattern[1:].lower() != host[start:].lower():
        return False
    # no dot left of where the pattern started to match: the wildcard covers one label
    return "." not in host[:start]


def _name_matches(name: str, host: str) -> bool:
    if "\0" in name:
        return False
    return name.lower() == host.lower() or _wildcard_match(name, host)


def _packed(host: str) -> bytes | None:
    if "%" in host:  # a zone index: inet_pton, which libpq uses, refuses it
        return None
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return None


def host_matches(facts: NameFacts, host: str) -> bool:
    """Would libpq with ``sslmode=verify-full`` accept this certificate for ``host``?"""
    address = _packed(host)
    if any(_name_matches(name, host) for name in facts.dns_names):
        return True
    if address is not None and address in facts.ip_addresses:
        return True
    has_same_type = bool(facts.ip_addresses) if address is not None else bool(facts.dns_names)
    if has_same_type:
        return False
    return facts.common_name is not None and _name_matches(facts.common_name, host)
