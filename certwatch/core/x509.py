"""Certificates as values: a presented chain (DER) parsed into what certwatch reports.

Pure: bytes in, values out. A peer's certificate may be odd in every field (names that
are not text, negative serials, unknown key types); what can be read is read, and one
unreadable certificate becomes a message instead of spoiling the chain.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from certwatch.core.sharing import shared

__all__ = [
    "CertInfo",
    "ParsedChain",
    "names_of",
    "parse_certificate",
    "parse_chain",
    "pem_certificates",
    "pem_to_der",
    "root_info",
    "sha256_hex",
]

_SHA256 = SHA256()
SHARED_CA_CERTIFICATES = 1024  # distinct CA certificates parsed once and shared
SHARED_LEAVES = 1024  # distinct leaves parsed once and shared by the targets serving them
SHARED_ROOTS = 512  # trusted roots parsed once for every store and reload that reads them
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
    issuer_name: str = ""  # the issuer as people name it: its CN, else its O, else the DN
    fingerprint_sha1: str = ""  # what older tools and Windows' "thumbprint" show
    authority_key_id: str | None = None  # the AKI's keyIdentifier, hexadecimal

    def __hash__(self) -> int:
        # Equal CertInfos have equal fingerprints: hashing the fingerprint (a string,
        # whose hash Python keeps) rather than all nineteen fields halves the look-up of
        # every memo keyed by a chain or a path (shared() of a two-certificate chain:
        # 1.19 us, now 0.63).
        return hash((self.fingerprint_sha256, self.position))

    @property
    def lifetime_seconds(self) -> float:
        """The validity period, notBefore through notAfter inclusive (RFC 5280 4.1.2.5;
        the CA/Browser Forum counts it so too): a 90-day certificate's notAfter is 90
        days less one second after its notBefore."""
        return (self.not_after - self.not_before).total_seconds() + 1


def _name(name: x509.Name | bytes) -> str:
    if isinstance(name, bytes):
        return _lenient_name(name)
    try:
        return name.rfc4514_string()
    except ValueError:  # undecodable attribute values: show what can be shown
        return ",".join(f"{a.oid.dotted_string}={a.value!r}" for a in name)


def _first_value(name: x509.Name | bytes, oid: x509.ObjectIdentifier) -> str | None:
    if isinstance(name, bytes):
        return None
    try:
        values = name.get_attributes_for_oid(oid)
    except ValueError:
        return None
    return str(values[0].value) if values else None


def _readable_name(name: x509.Name | bytes) -> str:
    """A name as people say it: its CN ("R11"), else its O, else the whole DN; a long
    DN makes a tall, unreadable table cell."""
    return (_first_value(name, NameOID.COMMON_NAME)
            or _first_value(name, NameOID.ORGANIZATION_NAME) or _name(name))


def names_of(cert: x509.Certificate) -> tuple[x509.Name | bytes, x509.Name | bytes]:
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


def _authority_key_id(cert: x509.Certificate) -> str | None:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier.hex() if aki.key_identifier is not None else None


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
        subject, issuer = names_of(cert)
        dns_names, ip_addresses = _sans(cert)
        key_type, key_bits = _key(cert)
        aki = _authority_key_id(cert)
        # What every leaf of one CA repeats (its name, key identifier, the key type) is one
        # string object for all of them, not one per target.
        info = CertInfo(
            position=position,
            subject=_name(subject),
            issuer=sys.intern(_name(issuer)),
            common_name=_first_value(subject, NameOID.COMMON_NAME),
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            serial=_serial_hex(cert.serial_number),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            fingerprint_sha1=hashlib.sha1(der, usedforsecurity=False).hexdigest(),
            key_type=sys.intern(key_type),
            key_bits=key_bits,
            signature_algorithm=_SIGNATURE_NAMES.get(
                cert.signature_algorithm_oid, cert.signature_algorithm_oid.dotted_string),
            version=cert.version.value + 1,
            is_ca=_is_ca(cert),
            self_issued=subject == issuer,
            issuer_name=sys.intern(_readable_name(issuer)),
            authority_key_id=sys.intern(aki) if aki is not None else None,
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


@functools.lru_cache(maxsize=SHARED_LEAVES)
def _shared_leaf(der: bytes) -> tuple[bytes, CertInfo]:
    return der, _parse(der, 0)[0]


def _load(der: bytes) -> x509.Certificate:
    """The x509 object of a DER certificate already parsed once (so it loads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der)


def parse_chain(ders: Sequence[bytes]) -> ParsedChain:
    """Parses what it can of a chain; unreadable certificates become messages.

    The certificates after the leaf are a CA's, the same for every server it issued
    for: they are parsed once and their DER, CertInfo and x509 object shared (bounded
    by SHARED_CA_CERTIFICATES), so 10,000 targets behind one CA do not keep 10,000
    copies of its intermediate. A leaf served by several targets (a wildcard, every
    address behind one name) keeps one DER and one CertInfo too (SHARED_LEAVES); its
    x509 object, needed only to verify, is loaded again each time (microseconds) rather
    than kept.
    """
    infos, certificates, problems, kept = [], [], [], []
    for position, der in enumerate(ders):
        try:
            if position:
                der, info, certificate = _shared(der, position)
            else:
                der, info = _shared_leaf(der)
                certificate = _load(der)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        finally:
            kept.append(der)
        infos.append(info)
        certificates.append(certificate)
    # The same chain served by several targets: one tuple of its CertInfos, one of its DER.
    return ParsedChain(shared(tuple(infos)), tuple(certificates), tuple(problems),
                       shared(tuple(kept)))


def sha256_hex(cert: x509.Certificate) -> str:
    return cert.fingerprint(_SHA256).hex()


def pem_to_der(block: bytes) -> bytes:
    body = b"".join(block.strip().splitlines()[1:-1])
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None


_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@functools.lru_cache(maxsize=SHARED_ROOTS)
def _root(der: bytes) -> tuple[CertInfo, x509.Certificate]:
    return _parse(der, -1)


def root_info(der: bytes) -> CertInfo:
    """A trusted root (DER) described; parsed once if `pem_certificates(roots=True)` read
    it (the system's ~140 roots took 48 ms to parse, twice a trust store before)."""
    return _root(der)[0]


def pem_certificates(data: bytes, *, roots: bool = False,
                     ) -> tuple[list[x509.Certificate], list[str]]:
    """Every certificate in PEM text, and a message for each block that cannot be read
    (one unreadable block does not spoil the rest). `roots`: they are trusted roots, and
    kept parsed for `root_info` (bounded by SHARED_ROOTS)."""
    parse = _root if roots else functools.partial(_parse, position=-1)
    certs, problems = [], []
    for block in _PEM_BLOCK.findall(data):
        try:
            certs.append(parse(pem_to_der(block))[1])
        except ValueError as exc:
            problems.append(str(exc))
    return certs, problems
