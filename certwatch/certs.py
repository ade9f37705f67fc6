"""Certificates: parse a presented chain and verify it offline.

Everything here is pure: it works on DER bytes, a :class:`TrustStore` and an explicit
`now`, so an expired or untrusted chain is analysed exactly like a good one, and tests
can move the clock. Only :func:`load_trust_store` reads files.

Verification uses `cryptography.x509.verification` with its web-PKI policy relaxed where
OpenSSL, Go and browsers are more lenient (for example a leaf without an authority key
identifier, common from older private CAs), so certwatch never calls a certificate
untrusted that real clients accept. Hostname matching is done here (RFC 6125 rules) so a
mismatch is told apart from an untrusted chain.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import ipaddress
import logging
import re
import ssl
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from certwatch.config import Endpoint
from cryptography.x509.verification import (
    Criticality,
    DNSName,
    ExtensionPolicy,
    IPAddress,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = [
    "CertInfo",
    "TrustStore",
    "TrustStores",
    "ParsedChain",
    "Verification",
    "hostname_matches",
    "load_trust_store",
    "parse_chain",
    "rfc3339",
    "verify_chain",
]

log = logging.getLogger(__name__)

_SHA256 = SHA256()
_DER = Encoding.DER
SHARED_CA_CERTIFICATES = 1024  # distinct CA certificates parsed once and shared
_SIGNATURE_NAMES = {
    oid: name.lower() for name, oid in vars(SignatureAlgorithmOID).items() if name.isupper()
}


@dataclass(frozen=True, slots=True)
class CertInfo:
    """The parsed fields of one certificate of a presented chain."""

    position: int  # 0 = leaf, 1.. = the certificates the server sent after it
    subject: str
    issuer: str
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    serial: str  # hexadecimal, as tools print it
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    key_type: str
    key_bits: int | None
    signature_algorithm: str
    version: int
    is_ca: bool
    self_issued: bool  # subject == issuer; a root, or a self-signed leaf

    @property
    def lifetime_seconds(self) -> float:
        return (self.not_after - self.not_before).total_seconds()


def _name(name: x509.Name | bytes) -> str:
    if isinstance(name, bytes):
        return _lenient_name(name)
    try:
        return name.rfc4514_string()
    except ValueError:  # undecodable attribute values: show what can be shown
        return ",".join(f"{a.oid.dotted_string}={a.value!r}" for a in name)


def _common_name(name: x509.Name | bytes) -> str | None:
    if isinstance(name, bytes):
        return None
    try:
        values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    return str(values[0].value) if values else None


def _names(cert: x509.Certificate) -> tuple[x509.Name | bytes, x509.Name | bytes]:
    """(subject, issuer). cryptography decodes a name's values when it is read, and a
    peer's bytes need not be text (Latin-1 in a T61String, say, which OpenSSL accepts):
    such a name stays its DER, which still compares equal to itself."""
    names: list[x509.Name | bytes] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a common name over 64 characters
        for field, index in (("subject", 4), ("issuer", 2)):
            try:
                names.append(getattr(cert, field))
            except ValueError:
                names.append(_tbs_fields(cert)[index])
    return names[0], names[1]


def _der_items(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(tag, content, whole element) of each DER element in `data`, one level deep."""
    items, pos = [], 0
    while pos < len(data):
        size, start = data[pos + 1], pos + 2
        if size & 0x80:
            start += size & 0x7F
            size = int.from_bytes(data[pos + 2 : start], "big")
        if start + size > len(data):
            raise ValueError("truncated DER element")
        items.append((data[pos], data[start : start + size], data[pos : start + size]))
        pos = start + size
    return items


def _tbs_fields(cert: x509.Certificate) -> list[bytes]:
    """serial, signature, issuer, validity, subject, ... of the TBSCertificate (as DER)."""
    fields = [whole for _, _, whole in _der_items(_der_items(cert.tbs_certificate_bytes)[0][1])]
    return fields[1:] if fields[0][0] == 0xA0 else fields  # without the version, if any


# RFC 4514's attribute names; other attributes are shown by their dotted OID.
_ATTRIBUTE_NAMES = {oid.dotted_string: name for oid, name in (
    (NameOID.COMMON_NAME, "CN"), (NameOID.LOCALITY_NAME, "L"), (NameOID.STATE_OR_PROVINCE_NAME, "ST"),
    (NameOID.ORGANIZATION_NAME, "O"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"),
    (NameOID.COUNTRY_NAME, "C"), (NameOID.STREET_ADDRESS, "STREET"),
    (NameOID.DOMAIN_COMPONENT, "DC"), (NameOID.USER_ID, "UID"))}
_STRING_CODECS = {0x14: "latin-1", 0x1C: "utf-32-be", 0x1E: "utf-16-be"}  # T61, Universal, BMP


def _lenient_name(der: bytes) -> str:
    """A Name cryptography cannot decode, as RFC 4514-like text: each value decoded as
    far as it goes, other bytes shown as \\xNN; the whole DER in hex if even that fails."""
    try:
        rdns = []
        for _, rdn, _ in _der_items(_der_items(der)[0][1]):
            values = []
            for _, pair, _ in _der_items(rdn):
                (_, oid, _), (tag, value, _) = _der_items(pair)[:2]
                text = value.decode(_STRING_CODECS.get(tag, "utf-8"), "backslashreplace")
                values.append(f"{_oid_text(oid)}={text}")
            rdns.append("+".join(values))
        return ",".join(reversed(rdns))
    except (ValueError, IndexError):
        return "#" + der.hex()


def _oid_text(body: bytes) -> str:
    arcs, value = [], 0
    for byte in body:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    dotted = ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))
    return _ATTRIBUTE_NAMES.get(dotted, dotted)


def _key(cert: x509.Certificate) -> tuple[str, int | None]:
    try:
        key = cert.public_key()
    except Exception:  # noqa: BLE001 - an unsupported key type is still a certificate
        return cert.public_key_algorithm_oid.dotted_string, None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, None


def _sans(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), ()
    return (tuple(san.get_values_for_type(x509.DNSName)),
            tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _serial_hex(serial: int) -> str:
    return ("-" if serial < 0 else "") + format(abs(serial), "X")




def parse_certificate(der: bytes, position: int) -> CertInfo:
    """Parses one DER certificate; raises ValueError for one that cannot be read."""
    return _parse(der, position)[0]


def _parse(der: bytes, position: int) -> tuple[CertInfo, x509.Certificate]:
    # Peers send what they like (negative serials, say); cryptography warns about some
    # of it when a field is read, and a warning is not ours to raise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return _parse_fields(der, position)


def _parse_fields(der: bytes, position: int) -> tuple[CertInfo, x509.Certificate]:
    try:
        cert = x509.load_der_x509_certificate(der)
        subject, issuer = _names(cert)
        dns_names, ip_addresses = _sans(cert)
        key_type, key_bits = _key(cert)
        info = CertInfo(
            position=position,
            subject=_name(subject),
            issuer=_name(issuer),
            common_name=_common_name(subject),
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            serial=_serial_hex(cert.serial_number),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            key_type=key_type,
            key_bits=key_bits,
            signature_algorithm=_SIGNATURE_NAMES.get(
                cert.signature_algorithm_oid, cert.signature_algorithm_oid.dotted_string),
            version=cert.version.value + 1,
            is_ca=_is_ca(cert),
            self_issued=subject == issuer,
        )
    except Exception as exc:  # noqa: BLE001 - any malformed input is one ValueError
        raise ValueError(f"certificate {position} cannot be parsed: {exc}") from None
    return info, cert


@dataclass(frozen=True, slots=True)
class ParsedChain:
    """A presented chain, parsed. The x509 objects serve verification only and are not
    kept afterwards: an Assessment holds the CertInfos, which are much smaller."""

    infos: tuple[CertInfo, ...]
    certificates: tuple[x509.Certificate, ...]  # parallel to infos
    problems: tuple[str, ...]  # one message per certificate that could not be read
    ders: tuple[bytes, ...]  # the chain as given, with shared copies of the CA certificates


@functools.lru_cache(maxsize=SHARED_CA_CERTIFICATES)
def _shared(der: bytes, position: int) -> tuple[bytes, CertInfo, x509.Certificate]:
    return (der, *_parse(der, position))


def parse_chain(ders: Sequence[bytes]) -> ParsedChain:
    """Parses what it can of a chain; unreadable certificates become messages.

    The certificates after the leaf are a CA's, the same for every server it issued
    for: they are parsed once and their DER, CertInfo and x509 object shared (bounded
    by SHARED_CA_CERTIFICATES), so 10,000 targets behind one CA do not keep 10,000
    copies of its intermediate.
    """
    infos, certificates, problems, kept = [], [], [], []
    for position, der in enumerate(ders):
        try:
            if position:
                der, info, certificate = _shared(der, position)
            else:
                info, certificate = _parse(der, position)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        finally:
            kept.append(der)
        infos.append(info)
        certificates.append(certificate)
    return ParsedChain(tuple(infos), tuple(certificates), tuple(problems), tuple(kept))


# --- trust -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class TrustStore:
    """Trusted roots; built once per configuration, shared by every assessment."""

    roots: tuple[x509.Certificate, ...]
    store: Store | None  # None when there are no roots at all
    subjects: frozenset[x509.Name | bytes]
    infos: Mapping[str, CertInfo]  # by SHA-256 fingerprint, parsed once, shared by all

    @classmethod
    def of(cls, roots: Iterable[x509.Certificate]) -> TrustStore:
        unique = {root.fingerprint(_SHA256).hex(): root for root in roots}
        infos = {}
        for fingerprint, root in unique.items():
            with contextlib.suppress(ValueError):  # a root we cannot describe still anchors
                infos[fingerprint] = parse_certificate(root.public_bytes(_DER), -1)
        certs = tuple(unique.values())
        return cls(certs, Store(list(certs)) if certs else None,
                   frozenset(_names(root)[0] for root in certs), infos)


def pem_to_der(block: bytes) -> bytes:
    body = b"".join(block.strip().splitlines()[1:-1])
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def read_pem_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file; one unreadable block does not spoil the rest."""
    certs = []
    for block in _PEM_BLOCK.findall(path.read_bytes()):
        try:
            certs.append(_parse(pem_to_der(block), -1)[1])
        except ValueError as exc:
            log.warning("skipping an unreadable certificate in %s: %s", path, exc)
    return certs


def system_roots() -> list[x509.Certificate]:
    """The operating system's trusted roots (certifi's bundle where there is none)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return read_pem_certificates(Path(candidate))
    try:
        import certifi  # a dependency of httpx, so always there
    except ImportError:  # pragma: no cover
        return []
    return read_pem_certificates(Path(certifi.where()))


def load_trust_store(*, system: bool, ca_file: Path | None) -> TrustStore:
    roots = system_roots() if system else []
    if ca_file is not None:
        roots.extend(read_pem_certificates(ca_file))
    return TrustStore.of(roots)


class TrustStores:
    """Trust stores by (system roots?, ca_file), each loaded once."""

    def __init__(self) -> None:
        self._stores: dict[tuple[bool, Path | None], TrustStore] = {}

    def for_endpoint(self, endpoint: Endpoint) -> TrustStore:
        key = (endpoint.system_trust, endpoint.ca_file)
        if key not in self._stores:
            self._stores[key] = load_trust_store(system=key[0], ca_file=key[1])
        return self._stores[key]


# --- verification ------------------------------------------------------------------------

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
    problems: tuple[str, ...]
    detail: str  # words for an operator; empty when there is no problem
    path: tuple[CertInfo, ...] = ()  # leaf to root as a client builds it, when trusted
                                     # (a trust anchor has position -1)

    @property
    def ok(self) -> bool:
        return not self.problems


def _normalise_host(name: str) -> str:
    name = name.rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def hostname_matches(cert: CertInfo, name: str) -> bool:
    """RFC 6125: DNS SANs (a whole left-most label may be '*'), IP SANs for IP literals.

    The subject common name is ignored, as modern clients do.
    """
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None:
        return any(ipaddress.ip_address(a) == ip for a in cert.ip_addresses)
    host = _normalise_host(name)
    for pattern in cert.dns_names:
        pattern = _normalise_host(pattern)
        if pattern == host:
            return True
        if pattern.startswith("*.") and "*" not in pattern[2:]:
            first, _, rest = host.partition(".")
            if first and rest == pattern[2:] and rest.count(".") >= 1:
                return True
    return False


def _subject_for(name: str) -> DNSName | IPAddress | None:
    try:
        return IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return DNSName(_normalise_host(name))
    except ValueError:
        return None


def _name_in(cert: CertInfo, wanted: str) -> str:
    """A name the certificate is valid for: `wanted` if it matches, else one of its SANs."""
    if hostname_matches(cert, wanted):
        return wanted
    for name in cert.dns_names:
        return name.replace("*", "wildcard", 1) if name.startswith("*.") else name
    return cert.ip_addresses[0] if cert.ip_addresses else wanted


def _build_path(chain: ParsedChain, trust: TrustStore, name: str,
                at: datetime) -> tuple[list[x509.Certificate] | None, str]:
    subject = _subject_for(name)
    if trust.store is None:
        return None, "no trusted roots are configured"
    if subject is None:
        return None, f"{name!r} is not a valid DNS name or IP address"
    builder = PolicyBuilder().store(trust.store).time(at)
    leaf, intermediates = chain.certificates[0], list(chain.certificates[1:])
    try:
        if not chain.infos[0].dns_names and not chain.infos[0].ip_addresses:
            return (builder.extension_policies(ca_policy=_RELAXED_CA, ee_policy=_SANLESS_EE)
                    .build_client_verifier().verify(leaf, intermediates).chain), ""
        verifier = (builder.extension_policies(ca_policy=_RELAXED_CA, ee_policy=_RELAXED_EE)
                    .build_server_verifier(subject))
        return verifier.verify(leaf, intermediates), ""
    except (VerificationError, ValueError) as exc:  # ValueError: cryptography failing to
        return None, str(exc)                        # name a certificate it cannot decode


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
    by_subject = {_names(cert)[0]: index for index, cert in enumerate(chain.certificates)}
    index, seen = 0, set()
    while not chain.infos[index].self_issued and index not in seen:
        seen.add(index)
        issuer = _names(chain.certificates[index])[1]
        if issuer in trust.subjects:
            return None
        if issuer not in by_subject:
            return chain.infos[index]
        index = by_subject[issuer]
    return None


def _validity_problems(certs: Iterable[CertInfo], now: datetime) -> list[str]:
    problems = []
    if any(c.not_after <= now for c in certs):
        problems.append("expired")
    if any(c.not_before > now for c in certs):
        problems.append("not_yet_valid")
    return problems


def verify_chain(chain: ParsedChain, trust: TrustStore, name: str, now: datetime) -> Verification:
    """Judges a presented chain (leaf first) as a client connecting to `name` at `now`."""
    if not chain.infos:
        return Verification(False, False, ("untrusted",), "no certificate to verify")
    leaf = chain.infos[0]
    hostname_ok = hostname_matches(leaf, name)
    problems: list[str] = []
    details: list[str] = []
    if not hostname_ok:
        problems.append("hostname_mismatch")
        names = ", ".join([*leaf.dns_names, *leaf.ip_addresses][:5]) or "no subjectAltName"
        details.append(f"certificate is not valid for {name!r} (it names {names})")

    # Trust is judged at a moment when the chain is valid, so that time problems are
    # reported as such rather than as distrust; validity is then checked at `now`.
    path_name = _name_in(leaf, name)
    path, error = _build_path(chain, trust, path_name, now)
    if path is None and (moment := _moment_all_valid(chain.infos)) is not None:
        path, error = _build_path(chain, trust, path_name, moment)
    weak = _weak_key(leaf)
    if weak is not None:
        path = None
    infos: tuple[CertInfo, ...] = ()
    if path is not None:
        known = {**trust.infos, **{c.fingerprint_sha256: c for c in chain.infos}}
        infos = tuple(info for cert in path if (info := known.get(_hex_fingerprint(cert))))
        time_problems = _validity_problems(infos, now)
    else:
        time_problems = _validity_problems(chain.infos, now)
        if leaf.self_issued and len(chain.infos) == 1:
            problems.append("self_signed")
            details.append("the certificate is self-signed and not a trusted root")
        elif (missing := _missing_issuer(chain, trust)) is not None:
            problems.append("incomplete_chain")
            details.append(f"the issuer of certificate {missing.position} ({missing.issuer}) "
                           "was not sent by the server and is not a trusted root")
        else:
            problems.append("untrusted")
            details.append(weak or f"no path to a trusted root: {error}")
    for problem in time_problems:
        problems.append(problem)
        details.append(_time_detail(problem, infos or chain.infos, now))
    return Verification(
        trusted=path is not None,
        hostname_match=hostname_ok,
        problems=tuple(problems),
        detail="; ".join(details),
        path=infos,
    )


def _hex_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(_SHA256).hex()


def _time_detail(problem: str, certs: Iterable[CertInfo], now: datetime) -> str:
    if problem == "expired":
        worst = min((c for c in certs if c.not_after <= now), key=lambda c: c.not_after)
        return f"{_which(worst)} ({worst.subject}) expired {rfc3339(worst.not_after)}"
    early = max((c for c in certs if c.not_before > now), key=lambda c: c.not_before)
    return f"{_which(early)} ({early.subject}) is not valid before {rfc3339(early.not_before)}"


def _which(cert: CertInfo) -> str:
    return "the trusted root" if cert.position < 0 else f"certificate {cert.position}"


def rfc3339(moment: datetime | None) -> str | None:
    """UTC, to the second, with a Z; None stays None."""
    if moment is None:
        return None
    # isoformat, not strftime: strftime does not zero-pad years before 1000
    return moment.astimezone(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat() + "Z"
