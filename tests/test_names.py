"""libpq's host-name rules (names.py), pinned case by case.

Each case that the oracle corpus also measured against real libpq is marked so in its id;
the others follow fe-secure-openssl.c's code.  Each refusal stands beside an acceptance.
"""

from __future__ import annotations

import ipaddress

import pytest

from certreload.names import NameFacts, host_matches


def facts(dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), cn: str | None = None) -> NameFacts:
    """NameFacts from readable values."""
    return NameFacts(dns, tuple(ipaddress.ip_address(ip).packed for ip in ips), cn)


CASES = [
    # (id, facts, host, accepted)
    ("exact-dns", facts(("db.example.com",)), "db.example.com", True),
    ("other-dns", facts(("db.example.com",)), "db2.example.com", False),
    ("case-insensitive", facts(("DB.Example.COM",)), "db.example.com", True),
    ("wildcard-one-label", facts(("*.example.com",)), "db.example.com", True),
    ("wildcard-two-labels", facts(("*.example.com",)), "a.db.example.com", False),
    ("wildcard-not-apex", facts(("*.example.com",)), "example.com", False),
    ("wildcard-tld (oracle)", facts(("*.com",)), "example.com", True),
    ("partial-wildcard (oracle)", facts(("db*.example.com",)), "db1.example.com", False),
    ("cn-only (oracle)", facts(cn="cluster-1"), "cluster-1", True),
    ("cn-only-other", facts(cn="cluster-1"), "cluster-2", False),
    ("cn-ignored-with-dns-san (oracle)", facts(("a.example.com",), cn="b"), "b", False),
    ("ip-san (oracle)", facts(ips=("10.1.2.3",)), "10.1.2.3", True),
    ("ip-san-other", facts(ips=("10.1.2.3",)), "10.1.2.4", False),
    ("ip-in-cn (oracle)", facts(cn="10.1.2.3"), "10.1.2.3", True),
    ("ip-in-cn-with-dns-sans (oracle)", facts(("db",), cn="10.1.2.3"), "10.1.2.3", True),
    ("cn-ignored-with-ip-san (oracle)", facts(ips=("10.9.9.9",), cn="10.1.2.3"), "10.1.2.3", False),
    ("ip-as-dns-san (oracle)", facts(("10.1.2.3",)), "10.1.2.3", True),
    ("ipv6-san", facts(ips=("2001:db8::1",)), "2001:db8::1", True),
    ("ipv6-other-spelling", facts(ips=("2001:db8::1",)), "2001:db8:0::1", True),
    ("ip-san-does-not-cover-dns", facts(ips=("10.1.2.3",), cn="db"), "db", True),
    ("dns-name-with-ip-san-only", facts(ips=("10.1.2.3",)), "db", False),
    ("nul-in-name", facts(("db\0.evil.com",)), "db", False),
]


@pytest.mark.parametrize(
    ("name_facts", "host", "accepted"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_libpq_host_rules(name_facts: NameFacts, host: str, accepted: bool) -> None:
    """Each case answers as libpq verify-full does."""
    assert host_matches(name_facts, host) is accepted


def test_cases_hold_both_answers() -> None:
    """The table is two-sided, so a matcher that always says yes or no fails it."""
    answers = {c[3] for c in CASES}
    assert answers == {True, False}
