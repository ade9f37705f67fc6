"""Offline verification: how clients would judge a presented chain, at a chosen moment.

Pure: a parsed chain, a :class:`TrustStore` (roots as values) and `now` in, a
:class:`Verification` out, so an expired or untrusted chain is analysed exactly like a
good one, and tests can move the clock.

Verification uses `cryptography.x509.verification` with its web-PKI policy relaxed where
OpenSSL, Go and browsers are more lenient (for example a leaf without an authority key
identifier, common from older private CAs), so certwatch never calls a certificate
untrusted that real clients accept. Hostname matching is done here (RFC 6125 rules) so a
mismatch is told apart from an untrusted chain.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    ServerVerifier,
    Store,
    VerificationError,
)

from certwatch.core.names import ip_literal, match_form
from certwatch.core.sharing import remember, shared
from certwatch.core.timestamps import rfc3339
from certwatch.core.vocabulary import Problem
from certwatch.core.x509 import CertInfo, ParsedChain, names_of, root_info, sha256_hex

__all__ = ["WEB_PKI", "TrustStore", "Verification", "VerificationKey", "VerifyPolicy",
           "hostname_matches", "time_problems", "verification_key", "verify_chain"]

# A validity boundary (notBefore, notAfter) is where a verification can change; one
# second either side covers verifiers that compare whole seconds, inclusively or not.
_BOUNDARY_MARGIN = timedelta(seconds=1)


def _boundaries(certs: Iterable[CertInfo]) -> list[datetime]:
    return [_shifted(moment, shift) for cert in certs
            for moment in (cert.not_before, cert.not_after)
            for shift in (-_BOUNDARY_MARGIN, _BOUNDARY_MARGIN)]


def _shifted(moment: datetime, shift: timedelta) -> datetime:
    """`moment + shift`, or `moment` at the ends of the calendar (year 1, 9999), where
    no clock will ever be to cross the boundary."""
    try:
        return moment + shift
    except OverflowError:
        return moment


# What a path built by cryptography depends on, so that targets presenting one chain share
# it: the certificates (by fingerprint), the policy, the moment's stretch between two
# validity boundaries of the chain and the store (as VerificationKey), and the name. A
# name whose SAN entry cryptography surely matches (_NAME_MATCHED) passes its name check,
# the only step that reads the name, so every such name gives one path: all the names
# under one wildcard share it. Any other name keys its own.
_PathKey = tuple[tuple[str, ...], "VerifyPolicy", object, datetime | None, datetime | None]
_Path = tuple[tuple[str, ...] | None, str]  # the path's fingerprints (None: none), the error
_NAME_MATCHED = object()
PATHS_REMEMBERED = 1024  # paths kept per trust store; the oldest go first


@dataclass(frozen=True, slots=True, eq=False)
class TrustStore:
    """Trusted roots; built once per configuration, shared by every assessment."""

    roots: tuple[x509.Certificate, ...]
    store: Store | None  # None when there are no roots at all
    subjects: frozenset[x509.Name | bytes]
    infos: Mapping[str, CertInfo]  # by SHA-256 fingerprint, parsed once, shared by all
    # Every root's validity boundaries, sorted: a root becoming valid or expiring can
    # change any verification against this store (VerificationKey).
    boundaries: tuple[datetime, ...] = field(default=())
    # The paths built against this store, shared by every target that presents the same
    # chain (see _PathKey); they go with the store when a reload replaces it.
    paths: dict[_PathKey, _Path] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, roots: Iterable[x509.Certificate]) -> TrustStore:
        unique = {sha256_hex(root): root for root in roots}
        infos = {}
        for fingerprint, root in unique.items():
            with contextlib.suppress(ValueError):  # a root we cannot describe still anchors
                infos[fingerprint] = root_info(root.public_bytes(Encoding.DER))
        certs = tuple(unique.values())
        return cls(certs, Store(list(certs)) if certs else None,
                   frozenset(names_of(root)[0] for root in certs), infos,
                   tuple(sorted(_boundaries(infos.values()))))


# Extensions the strict web-PKI profile requires but OpenSSL, Go and browsers do not.
def _server_auth_allowed(policy: object, cert: x509.Certificate,
                         eku: x509.ExtendedKeyUsage | None) -> None:
    """As OpenSSL's purpose check: an EKU, critical or not, must allow serverAuth."""
    if eku is not None and not {ExtendedKeyUsageOID.SERVER_AUTH,
                                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(eku):
        raise ValueError("extended key usage does not allow TLS server authentication")


# OpenSSL also accepts a critical subjectAltName beside a non-empty subject and a
# critical extended key usage (trustme and some private CAs issue both).
_RELAXED_EE = (ExtensionPolicy.webpki_defaults_ee()
               .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
               .require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
               .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _server_auth_allowed))
# The server verifier refuses a leaf without a subjectAltName outright, which no modern
# client matches a name against (hostname_mismatch says so) but whose chain they would
# still build: its trust is judged with this policy and a client verifier instead.
_SANLESS_EE = (ExtensionPolicy.webpki_defaults_ee()
               .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
               .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
               .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _server_auth_allowed))
_RELAXED_CA = (ExtensionPolicy.webpki_defaults_ca()
               .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
               .may_be_present(x509.SubjectKeyIdentifier, Criticality.AGNOSTIC, None)
               .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, None))


@dataclass(frozen=True, slots=True, eq=False)
class VerifyPolicy:
    """The extension policies a chain is verified with (compared by identity: a policy
    is a module constant, and another one is another policy)."""

    ee: ExtensionPolicy
    sanless_ee: ExtensionPolicy
    ca: ExtensionPolicy


WEB_PKI = VerifyPolicy(_RELAXED_EE, _SANLESS_EE, _RELAXED_CA)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """What a verification depends on, so that it can be reused while nothing changed:
    the chain (DER, as presented), the trust store (by identity: a reload or another
    `ca_file` is another store), the name checked, the policy, and the stretch of time
    between two validity boundaries of the chain's certificates and the store's roots
    (`now` strictly inside it). Anything else gives another key."""

    ders: tuple[bytes, ...]
    trust: TrustStore
    name: str
    policy: VerifyPolicy
    after: datetime | None  # the last boundary before `now` (None: none)
    before: datetime | None  # the first boundary after it

    def admits(self, ders: tuple[bytes, ...], trust: TrustStore, name: str,
               policy: VerifyPolicy, now: datetime) -> bool:
        """Whether a verification made under this key holds for these inputs."""
        return (trust is self.trust and policy is self.policy and name == self.name
                and (self.after is None or self.after < now)
                and (self.before is None or now < self.before)
                and ders == self.ders)


def verification_key(ders: tuple[bytes, ...], chain: Sequence[CertInfo], trust: TrustStore,
                     name: str, policy: VerifyPolicy, now: datetime) -> VerificationKey | None:
    """The key of a verification of `chain` (parsed from `ders`) at `now`; None when
    `now` sits on a boundary (then nothing is reused)."""
    window = _window(chain, trust, now)
    if window is None:
        return None
    return VerificationKey(ders, trust, name, policy, shared(window[0]), shared(window[1]))


def _last_before(moments: Sequence[datetime], now: datetime) -> datetime | None:
    index = bisect.bisect_left(moments, now)
    return moments[index - 1] if index else None


def _first_after(moments: Sequence[datetime], now: datetime) -> datetime | None:
    index = bisect.bisect_right(moments, now)
    return moments[index] if index < len(moments) else None


@dataclass(frozen=True, slots=True)
class Verification:
    """How clients would judge the chain, with each problem named.

    problems: expired, not_yet_valid, self_signed, untrusted, incomplete_chain,
    hostname_mismatch. `trusted` says whether a path to a trusted root exists at some
    moment when every certificate on it is valid, so an expired but otherwise good
    chain is reported as expired, not as untrusted.
    """

    trusted: bool
    hostname_match: bool
    problems: tuple[Problem, ...]
    detail: str  # words for an operator; empty when there is no problem
    path: tuple[CertInfo, ...] = ()  # leaf to root as a client builds it, when trusted
                                     # (a trust anchor has position -1)
    name_checked: bool = True  # False for a certificate at rest: there is no host name

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rejections(self) -> tuple[Problem, ...]:
        """The problems that are not about time: expiry is the threshold policy's to judge."""
        return tuple(p for p in self.problems if p is not Problem.EXPIRED)


def _normalise_host(name: str) -> str:
    """IDNA 2008 + UTS #46 (not Python's IDNA 2003 codec), a wildcard label kept."""
    if name.startswith("*."):
        return "*." + match_form(name[2:])
    return match_form(name)


def hostname_matches(cert: CertInfo, name: str) -> bool:
    """RFC 6125: DNS SANs (a whole left-most label may be '*'), IP SANs for IP literals.

    The subject common name is ignored, as modern clients do.
    """
    return _matching_san(cert, name) is not None


def _matching_san(cert: CertInfo, name: str) -> str | None:
    """The subjectAltName entry `name` matches (hostname_matches), as written; None if none."""
    ip = ip_literal(name)
    if ip is not None:
        return next((a for a in cert.ip_addresses if ipaddress.ip_address(a) == ip), None)
    host = _normalise_host(name)
    for written in cert.dns_names:
        pattern = _normalise_host(written)
        if pattern == host:
            return written
        if pattern.startswith("*.") and "*" not in pattern[2:]:
            first, _, rest = host.partition(".")
            if first and rest == pattern[2:] and rest.count(".") >= 1:
                return written
    return None


def _subject_for(name: str) -> DNSName | IPAddress | None:
    ip = ip_literal(name)
    if ip is not None:
        return IPAddress(ip)
    try:
        return DNSName(_normalise_host(name))
    except ValueError:
        return None


def _name_in(cert: CertInfo, wanted: str) -> tuple[str, str | None]:
    """A name the certificate is valid for: `wanted` if it matches, else one of its SANs;
    with the SAN entry it matches (None if none)."""
    if (written := _matching_san(cert, wanted)) is not None:
        return wanted, written
    for name in cert.dns_names:
        mine = name.replace("*", "wildcard", 1) if name.startswith("*.") else name
        return mine, _matching_san(cert, mine)
    if cert.ip_addresses:
        return cert.ip_addresses[0], cert.ip_addresses[0]
    return wanted, None


# Intermediates followed between the leaf and a root: cryptography's default, set here
# so that the refusal can name it (its own message names no number, or "None").
MAX_CHAIN_DEPTH = 8


def _name_class(leaf: CertInfo, name: str, written: str | None) -> object:
    """_NAME_MATCHED when cryptography's name check surely passes for `name`, a name it
    has accepted as a subject: `written`, the SAN entry our own matcher found for it, is
    in the form both compare (lower-case A-labels, no trailing dot), or an IP entry.
    Otherwise `name` itself."""
    if written is not None and (written in leaf.ip_addresses
                                or _normalise_host(written) == written.lower()):
        return _NAME_MATCHED
    return name


# The sorted validity boundaries of the chains verified lately, by the certificates'
# fingerprints (hashing the CertInfos themselves would cost more than sorting).
_CHAIN_BOUNDARIES: dict[tuple[str, ...], tuple[datetime, ...]] = {}


def _chain_boundaries(chain: Sequence[CertInfo]) -> tuple[datetime, ...]:
    """The chain's validity boundaries, sorted once for every target that presents it."""
    key = tuple(c.fingerprint_sha256 for c in chain)
    found = _CHAIN_BOUNDARIES.get(key)
    if found is None:
        found = remember(_CHAIN_BOUNDARIES, key, tuple(sorted(_boundaries(chain))),
                         PATHS_REMEMBERED)
    return found


def _on(moments: Sequence[datetime], now: datetime) -> bool:
    """Whether `now` is one of the sorted `moments`."""
    index = bisect.bisect_left(moments, now)
    return index < len(moments) and moments[index] == now


def _window(chain: Sequence[CertInfo], trust: TrustStore, now: datetime,
            ) -> tuple[datetime | None, datetime | None] | None:
    """The last validity boundary before `now` and the first after it, of the chain's
    certificates and the store's roots; None when `now` sits on one."""
    moments = _chain_boundaries(chain)
    if _on(moments, now) or _on(trust.boundaries, now):
        return None
    after = [m for m in (_last_before(moments, now), _last_before(trust.boundaries, now))
             if m is not None]
    before = [m for m in (_first_after(moments, now), _first_after(trust.boundaries, now))
              if m is not None]
    return max(after, default=None), min(before, default=None)


def _build_path(chain: ParsedChain, trust: TrustStore, name: str, written: str | None,
                at: datetime, policy: VerifyPolicy) -> tuple[tuple[CertInfo, ...] | None, str]:
    """The path cryptography builds from the chain to a trusted root at `at`, checking
    `name` (`written`: the leaf's SAN entry it matches), and why there is none; built
    once for every target it is the same for."""
    subject = _subject_for(name)
    if trust.store is None:
        return None, "no trusted roots are configured"
    if subject is None:
        return None, f"{name!r} is not a valid DNS name or IP address"
    builder = PolicyBuilder().store(trust.store).time(at).max_chain_depth(MAX_CHAIN_DEPTH)
    leaf = chain.infos[0]
    sanless = not leaf.dns_names and not leaf.ip_addresses
    try:
        verifier: ServerVerifier | ClientVerifier = (
            builder.extension_policies(ca_policy=policy.ca, ee_policy=policy.sanless_ee)
            .build_client_verifier() if sanless else
            builder.extension_policies(ca_policy=policy.ca, ee_policy=policy.ee)
            .build_server_verifier(subject))
    except ValueError as exc:  # a name cryptography refuses ("invalid domain name")
        return None, str(exc)
    window = _window(chain.infos, trust, at)
    key = None
    if window is not None:
        key = (tuple(c.fingerprint_sha256 for c in chain.infos), policy,
               _NAME_MATCHED if sanless else _name_class(leaf, name, written), *window)
        if (found := trust.paths.get(key)) is not None:
            return _path_infos(found[0], chain, trust), found[1]
    path, error = _verified(verifier, chain)
    if key is not None:
        remember(trust.paths, key, (path, error), PATHS_REMEMBERED)
    return _path_infos(path, chain, trust), error


def _verified(verifier: ServerVerifier | ClientVerifier,
              chain: ParsedChain) -> tuple[tuple[str, ...] | None, str]:
    leaf, intermediates = chain.certificates[0], list(chain.certificates[1:])
    try:
        path = (verifier.verify(leaf, intermediates).chain if isinstance(verifier, ClientVerifier)
                else verifier.verify(leaf, intermediates))
        return tuple(sha256_hex(cert) for cert in path), ""
    except (VerificationError, ValueError) as exc:  # ValueError: cryptography failing to
        if "max depth" in str(exc):                  # name a certificate it cannot decode
            sent = sum(1 for info in chain.infos[1:] if not info.self_issued)
            return None, (f"the chain exceeds the maximum depth: certwatch follows at most "
                          f"{MAX_CHAIN_DEPTH} intermediate certificates, and the server "
                          f"sent {sent}")
        return None, str(exc)


def _path_infos(path: tuple[str, ...] | None, chain: ParsedChain,
                trust: TrustStore) -> tuple[CertInfo, ...] | None:
    """The path's certificates as this chain's and the store's CertInfos."""
    if path is None:
        return None
    known = {**trust.infos, **{c.fingerprint_sha256: c for c in chain.infos}}
    return tuple(info for fingerprint in path if (info := known.get(fingerprint)))


# No client accepts an RSA or DSA key this small (Go, OpenSSL at security level 1 and
# browsers refuse them). cryptography only checks the keys that sign on the path, so the
# leaf's own key is checked here; 1024 bits and more are reported in key_bits.
MIN_KEY_BITS = 1024


def _weak_key(leaf: CertInfo) -> str | None:
    if leaf.key_type in ("RSA", "DSA") and leaf.key_bits is not None and leaf.key_bits < MIN_KEY_BITS:
        return (f"the leaf's {leaf.key_bits}-bit {leaf.key_type} key is too weak: clients "
                f"refuse keys under {MIN_KEY_BITS} bits")
    return None


def _moment_all_valid(chain: tuple[CertInfo, ...]) -> datetime | None:
    start = max(c.not_before for c in chain)
    end = min(c.not_after for c in chain)
    return start if start < end else None


def _missing_issuer(chain: ParsedChain, trust: TrustStore) -> CertInfo | None:
    """The last certificate reachable from the leaf whose issuer nobody has, if any."""
    by_subject = {names_of(cert)[0]: index for index, cert in enumerate(chain.certificates)}
    index, seen = 0, set()
    while not chain.infos[index].self_issued and index not in seen:
        seen.add(index)
        issuer = names_of(chain.certificates[index])[1]
        if issuer in trust.subjects:
            return None
        if issuer not in by_subject:
            return chain.infos[index]
        index = by_subject[issuer]
    return None


def _validity_problems(certs: Iterable[CertInfo], now: datetime) -> list[Problem]:
    problems = []
    if any(c.not_after <= now for c in certs):
        problems.append(Problem.EXPIRED)
    if any(c.not_before > now for c in certs):
        problems.append(Problem.NOT_YET_VALID)
    return problems


def time_problems(certs: tuple[CertInfo, ...], now: datetime) -> tuple[list[Problem], list[str]]:
    """Expired and not-yet-valid certificates among `certs` at `now`, with their words."""
    problems = _validity_problems(certs, now)
    return problems, [_time_detail(problem, certs, now) for problem in problems]


def verify_chain(chain: ParsedChain, trust: TrustStore, name: str, now: datetime,
                 policy: VerifyPolicy = WEB_PKI) -> Verification:
    """Judges a presented chain (leaf first) as a client connecting to `name` at `now`."""
    if not chain.infos:
        return Verification(False, False, (Problem.UNTRUSTED,), "no certificate to verify")
    leaf = chain.infos[0]
    path_name, written = _name_in(leaf, name)
    hostname_ok = path_name == name and written is not None
    problems: list[Problem] = []
    details: list[str] = []
    if not hostname_ok:
        problems.append(Problem.HOSTNAME_MISMATCH)
        names = ", ".join([*leaf.dns_names, *leaf.ip_addresses][:5]) or "no subjectAltName"
        details.append(f"certificate is not valid for {name!r} (it names {names})")

    # Trust is judged at a moment when the chain is valid, so that time problems are
    # reported as such rather than as distrust; validity is then checked at `now`.
    path, error = _build_path(chain, trust, path_name, written, now, policy)
    if path is None and (moment := _moment_all_valid(chain.infos)) is not None:
        path, error = _build_path(chain, trust, path_name, written, moment, policy)
    weak = _weak_key(leaf)
    if weak is not None:
        path = None
    infos: tuple[CertInfo, ...] = ()
    if path is not None:
        infos = path
        timing = _validity_problems(infos, now)
    else:
        timing = _validity_problems(chain.infos, now)
        if leaf.self_issued and len(chain.infos) == 1:
            problems.append(Problem.SELF_SIGNED)
            details.append("the certificate is self-signed and not a trusted root")
        elif (missing := _missing_issuer(chain, trust)) is not None:
            problems.append(Problem.INCOMPLETE_CHAIN)
            details.append(f"the issuer of certificate {missing.position} ({missing.issuer}) "
                           "was not sent by the server and is not a trusted root")
        else:
            problems.append(Problem.UNTRUSTED)
            details.append(weak or f"no path to a trusted root: {error}")
    for problem in timing:
        problems.append(problem)
        details.append(_time_detail(problem, infos or chain.infos, now))
    return shared(Verification(
        trusted=path is not None,
        hostname_match=hostname_ok,
        problems=tuple(problems),
        detail="; ".join(details),
        path=infos,
    ))


def _time_detail(problem: Problem, certs: Iterable[CertInfo], now: datetime) -> str:
    if problem is Problem.EXPIRED:
        worst = min((c for c in certs if c.not_after <= now), key=lambda c: c.not_after)
        return f"{_which(worst)} ({worst.subject}) expired {rfc3339(worst.not_after)}"
    early = max((c for c in certs if c.not_before > now), key=lambda c: c.not_before)
    return f"{_which(early)} ({early.subject}) is not valid before {rfc3339(early.not_before)}"


def _which(cert: CertInfo) -> str:
    return "the trusted root" if cert.position < 0 else f"certificate {cert.position}"
