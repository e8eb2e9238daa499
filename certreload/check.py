"""``certreload --check``: one look at the files and the server, never a reload.

The output is a Nagios plugin's: one status line on stdout, then detail lines, and the exit
code 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.  ``evaluate`` is pure; ``run`` does the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from certreload import snapshot
from certreload.mounts import Finding, diagnose
from certreload.pem import CertInfo
from certreload.served import Served, ServedError, read_served
from certreload.settings import Settings
from certreload.verdict import Policy, Verdict, judge


class Status(IntEnum):
    """Nagios plugin exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Outcome:
    """What --check prints and returns."""

    status: Status
    summary: str
    details: tuple[str, ...]
    report: dict[str, Any]

    @property
    def line(self) -> str:
        return f"CERTRELOAD {self.status.name} - {self.summary}"


def policy_of(settings: Settings) -> Policy:
    """The verdict's policy from the settings."""
    return Policy(
        sans=settings.sans,
        pg_uid=settings.pg_user.uid,
        pg_user=settings.pg_user.name,
        pg_gids=settings.pg_user.gids,
        expiry_warning=settings.expiry_warning,
        key_rule=settings.install_dir is None,
    )


def _leaf_words(leaf: CertInfo, now: datetime) -> str:
    days = (leaf.not_after - now).days
    return f"{leaf.label} valid until {leaf.not_after:%Y-%m-%d} ({days} days)"


def evaluate(
    verdict: Verdict,
    served: Served | None,
    served_error: str | None,
    now: datetime,
    server: str | None,
    findings: Sequence[Finding] = (),
    ca_note: str | None = None,
) -> Outcome:
    """Decide the status from the verdict and what the server presents (None: not asked).

    ``findings`` are mount diagnostics (a subPath mount makes an otherwise OK set WARNING);
    ``ca_note`` says that the served certificate is not trusted by the files' ca.crt.
    """
    details = [f"problem: {p}" for p in verdict.problems]
    details += [f"warning: {w}" for w in verdict.warnings]
    details += [f"{'warning' if f.code == 'subpath-mount' else 'note'}: {f}" for f in findings]
    if ca_note:
        details.append(f"warning: {ca_note}")
    leaf = verdict.leaf
    matches = (
        served is not None
        and leaf is not None
        and served.fingerprint_sha256 == (leaf.fingerprint_sha256)
    )
    if leaf is not None:
        details.append(
            f"files: sha256 {leaf.fingerprint_sha256}, notAfter {leaf.not_after:%Y-%m-%dT%H:%M:%SZ}"
        )
    if served is not None:
        details.append(f"served by {server}: sha256 {served.fingerprint_sha256}")
    if verdict.names:
        details.append("names checked: " + ", ".join(verdict.names))
    report = _report(verdict, served, served_error, server, matches)
    if not verdict.valid:
        first = verdict.problems[0]
        more = f" (and {len(verdict.problems) - 1} more)" if len(verdict.problems) > 1 else ""
        status, summary = Status.CRITICAL, f"certificate set rejected: {first}{more}"
    elif served_error is not None:
        status, summary = (
            Status.UNKNOWN,
            f"files valid, but the server cannot be read: {served_error}",
        )
    elif served is not None and not matches:
        status = Status.WARNING
        summary = (
            "files valid but not yet served: the server presents another certificate "
            "(a reload is pending)"
        )
    elif verdict.expiring:
        status = Status.WARNING
        summary = next(str(w) for w in verdict.warnings if w.code == "expiring")
    elif any(f.code == "subpath-mount" for f in findings):
        status = Status.WARNING
        summary = next(str(f) for f in findings if f.code == "subpath-mount")
    else:
        assert leaf is not None
        where = f", served by {server}" if served is not None else ", server not checked"
        summary = _leaf_words(leaf, now) + where
        if not verdict.names:
            summary += "; names not checked (no --san)"
        status = Status.OK
    report["status"] = status.name
    report["mounts"] = [asdict(f) for f in findings]
    report["ca_rotation"] = ca_note
    return Outcome(status, summary, tuple(details), report)


def _report(
    verdict: Verdict,
    served: Served | None,
    served_error: str | None,
    server: str | None,
    matches: bool,
) -> dict[str, Any]:
    def cert(info: CertInfo | None) -> dict[str, Any] | None:
        if info is None:
            return None
        data = asdict(info)
        data["not_before"] = info.not_before.isoformat()
        data["not_after"] = info.not_after.isoformat()
        return data

    return {
        "valid": verdict.valid,
        "digest": verdict.digest,
        "files": verdict.files,
        "problems": [asdict(p) for p in verdict.problems],
        "warnings": [asdict(w) for w in verdict.warnings],
        "names_checked": list(verdict.names),
        "leaf": cert(verdict.leaf),
        "chain": [cert(c) for c in verdict.chain],
        "served": {
            "address": server,
            "fingerprint_sha256": served.fingerprint_sha256 if served else None,
            "error": served_error,
            "matches_files": matches,
        },
    }


def run(settings: Settings, now: datetime | None = None) -> Outcome:
    """Read the files and the server, judge, and decide."""
    moment = now or datetime.now(UTC)
    snap = snapshot.read(settings.cert, settings.key, settings.ca)
    verdict = judge(snap, policy_of(settings), moment)
    served = error = None
    server = str(settings.server_addr) if settings.server_addr is not None else None
    if settings.server_addr is not None:
        try:
            served = read_served(settings.server_addr)
        except ServedError as exc:
            error = str(exc)
    files = [settings.cert, settings.key, *([settings.ca] if settings.ca else [])]
    note = served_trust_note(snap, served, verdict)
    return evaluate(verdict, served, error, moment, server, diagnose(files), note)


def served_trust_note(
    snap: snapshot.Snapshot, served: Served | None, verdict: Verdict
) -> str | None:
    """When the server presents another certificate that ca.crt no longer trusts: say so.

    That is a CA rotation done in the unsafe order: clients given this ca.crt cannot verify
    the server until it loads the new leaf.
    """
    leaf = verdict.leaf
    if served is None or leaf is None or served.fingerprint_sha256 == leaf.fingerprint_sha256:
        return None
    if snap.ca is None or snap.ca.data is None or snap.cert.data is None:
        return None
    from cryptography import x509

    from certreload.pem import PARSE_ERRORS, UnreadableError, chain_path, describe, parse_certs

    try:
        presented = describe(x509.load_der_x509_certificate(served.der))
        trusted = parse_certs(snap.ca.data)
        if served.chain is not None:  # what clients get: the chain the server sends
            extras = [describe(x509.load_der_x509_certificate(der)) for der in served.chain]
        else:
            extras = parse_certs(snap.cert.data)[1:]
    except (*PARSE_ERRORS, UnreadableError):
        return None
    if chain_path(presented, extras, trusted, datetime.now(UTC))[1]:
        return None
    return (
        f"CA rotation: the certificate the server presents (issuer '{presented.info.issuer}') "
        f"is not trusted by {snap.ca.name}; clients given this ca.crt fail verify-full until "
        "the server loads the new leaf. Safe order: a ca.crt holding both CAs first, then "
        "the new leaf"
    )


def render(outcome: Outcome, as_json: bool) -> str:
    """The text --check prints."""
    if as_json:
        import json

        return json.dumps(outcome.report, indent=2, sort_keys=True)
    return "\n".join([outcome.line, *outcome.details])
