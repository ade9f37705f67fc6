"""Revocation, judged: is a certificate of the chain revoked, who says so, and when. Pure.

Evidence comes from three sources: the OCSP response the server stapled, the CRLs named
in each certificate's CRL Distribution Points, and the certificate's OCSP responder (its
AIA). Fetching is shell work (:mod:`certwatch.sources.revocation`); here each piece of
evidence is judged against the certificate and its issuer at `now`: the signer, the
certificate it speaks of, its validity window, and what it says.

Soft-fail, as browsers do: evidence that cannot be had or trusted gives `unknown` with a
reason (one of :class:`Unknown`, a bounded vocabulary) and leaves the target's state
alone. Only validly signed evidence can say `revoked`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Iterable, Mapping, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

__all__ = [
    "CRLIndex", "FetchFailure", "Revocation", "RevocationCheck", "RevocationSource",
    "RevocationStatus", "Unknown", "check_crl", "check_ocsp", "combine", "crl_urls", "extension",
    "failed",
    "index_crl", "must_staple", "ocsp_request", "ocsp_urls",
]

CLOCK_SKEW = timedelta(minutes=5)  # a thisUpdate this far ahead of our clock is tolerated
# A response without nextUpdate is taken as valid this long after its thisUpdate (as
# Firefox does), so a responder that never says how long cannot stay "good" forever.
NO_NEXT_UPDATE_LIFETIME = timedelta(days=1)
URLS_PER_CERTIFICATE = 2  # distribution points or responders followed per certificate


class RevocationStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


class RevocationSource(StrEnum):
    """Where the word came from; also the order of preference when several say good."""

    STAPLE = "staple"
    OCSP = "ocsp"
    CRL = "crl"


class Unknown(StrEnum):
    """Why a status is unknown. Bounded: it is a metric label."""

    NOT_CHECKED = "not_checked"  # the checks are off, or the chain names no source at all
    PENDING = "pending"  # the fetch is still under way (its result serves the next probe)
    UNREACHABLE = "unreachable"  # refused, timed out, an HTTP error
    TOO_LARGE = "too_large"  # the response was over the size bound
    MALFORMED = "malformed"  # not a CRL or OCSP response at all
    RESPONDER_ERROR = "responder_error"  # an OCSP responder answered with an error status
    NO_ISSUER = "no_issuer"  # the issuer's certificate is not at hand to check a signature
    WRONG_ISSUER = "wrong_issuer"  # a CRL of another CA
    WRONG_CERTIFICATE = "wrong_certificate"  # an OCSP response about another certificate
    BAD_SIGNATURE = "bad_signature"  # not signed by the issuer (nor by its OCSP responder)
    NOT_YET_VALID = "not_yet_valid"  # thisUpdate in the future
    STALE = "stale"  # past nextUpdate: expired
    UNKNOWN_CERTIFICATE = "unknown_certificate"  # the responder does not know the certificate


@dataclass(frozen=True, slots=True)
class RevocationCheck:
    """One source's word on one certificate of the chain."""

    source: RevocationSource
    position: int  # of the certificate in the presented chain (0 = leaf)
    status: RevocationStatus
    checked_at: datetime  # when the evidence was obtained
    reason: Unknown | None = None  # why, when the status is unknown
    detail: str = ""  # words for an operator
    url: str | None = None
    revoked_at: datetime | None = None
    revocation_reason: str | None = None  # the CRL entry's or OCSP response's reason code
    next_update: datetime | None = None


@dataclass(frozen=True, slots=True)
class Revocation:
    """A target's revocation status: the worst word on any certificate of its chain."""

    status: RevocationStatus
    source: RevocationSource | None  # which source settled it (None: unknown)
    checked_at: datetime | None
    reason: Unknown | None  # why it is unknown
    detail: str
    checks: tuple[RevocationCheck, ...] = ()
    must_staple_missing: bool = False  # the leaf demands a staple the server did not send


@dataclass(frozen=True, slots=True)
class FetchFailure:
    """A fetch that did not give usable evidence (from the shell, as a value)."""

    url: str
    reason: Unknown
    detail: str
    at: datetime


@dataclass(frozen=True, slots=True, eq=False)
class CRLIndex:
    """A parsed CRL with its revoked serials indexed once, shared by every target it
    covers (a CA's CRL may list 100,000 serials; each probe looks up one)."""

    crl: x509.CertificateRevocationList
    revoked: Mapping[int, tuple[datetime, str | None]]  # serial -> (when, reason)
    url: str
    fetched_at: datetime
    size: int

    @property
    def next_update(self) -> datetime | None:
        return self.crl.next_update_utc


def index_crl(data: bytes, url: str, fetched_at: datetime) -> CRLIndex:
    """Parses a CRL (DER, or PEM); raises ValueError for anything else."""
    try:
        crl = x509.load_der_x509_crl(data)
    except ValueError:
        crl = x509.load_pem_x509_crl(data)  # raises ValueError in turn
    revoked = {entry.serial_number: (entry.revocation_date_utc, _crl_reason(entry))
               for entry in crl}
    return CRLIndex(crl, revoked, url, fetched_at, len(data))


def _crl_reason(entry: x509.RevokedCertificate) -> str | None:
    try:
        return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value)
    except (x509.ExtensionNotFound, ValueError):
        return None


# --- what a certificate names -----------------------------------------------------------


E = TypeVar("E", bound=x509.ExtensionType)


def extension(cert: x509.Certificate, kind: type[E]) -> E | None:
    """The certificate's extension of that kind; None when absent or unreadable."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):  # ValueError: an extension that is garbage
        return None


def _http(names: Iterable[x509.GeneralName]) -> list[str]:
    return [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)
            and n.value.lower().startswith(("http://", "https://"))]


# Look-ups memoised per certificate. A CA's certificate is asked about for every target
# under it, so it stays among the most recent; a leaf only around its own probe (before
# and after the fetches). A small bound keeps the CAs and the probes in flight, and not
# a leaf (its x509 object, names and extensions, ~1 KB) per target of a large inventory.
CERTIFICATE_MEMO = 512


@functools.lru_cache(maxsize=CERTIFICATE_MEMO)
def crl_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The HTTP URLs of the certificate's CRL Distribution Points (LDAP ones are skipped)."""
    points = extension(cert, x509.CRLDistributionPoints)
    urls = [url for point in points or () if point.full_name for url in _http(point.full_name)[:1]]
    return tuple(dict.fromkeys(urls))[:URLS_PER_CERTIFICATE]


@functools.lru_cache(maxsize=CERTIFICATE_MEMO)
def ocsp_urls(cert: x509.Certificate) -> tuple[str, ...]:
    access = extension(cert, x509.AuthorityInformationAccess)
    urls = _http(d.access_location for d in access or ()
                 if d.access_method == AuthorityInformationAccessOID.OCSP)
    return tuple(dict.fromkeys(urls))[:URLS_PER_CERTIFICATE]


@functools.lru_cache(maxsize=CERTIFICATE_MEMO)
def must_staple(cert: x509.Certificate) -> bool:
    """Whether the certificate carries the TLS Feature status_request (RFC 7633)."""
    features = extension(cert, x509.TLSFeature)
    return features is not None and x509.TLSFeatureType.status_request in features


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The OCSP request for `cert` (SHA-1 certificate ID, as responders expect; no nonce,
    so the same request is the same cache key)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


# --- signatures ---------------------------------------------------------------------------


_HASHES = {algorithm.name: algorithm for algorithm in (
    hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)}


def _signed(signer: x509.Certificate, signature: bytes, data: bytes,
            algorithm: hashes.HashAlgorithm | None) -> bool:
    return _signed_by(signer, signature, data, algorithm.name if algorithm else None)


@functools.lru_cache(maxsize=4096)
def _signed_by(signer: x509.Certificate, signature: bytes, data: bytes,
               hash_name: str | None) -> bool:
    """Checked once per (signer, signed bytes): a server staples the same response to
    every handshake until it fetches the next one."""
    key = signer.public_key()
    algorithm = _HASHES[hash_name]() if hash_name in _HASHES else None
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, dsa.DSAPublicKey) and algorithm is not None:
            key.verify(signature, data, algorithm)
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@functools.lru_cache(maxsize=256)
def _crl_signed_by(crl: CRLIndex, issuer: x509.Certificate) -> bool:
    """Checked once per (CRL, issuer), however many targets the CRL covers."""
    try:
        return crl.crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _delegated_responder(response: ocsp.OCSPResponse, issuer: x509.Certificate,
                         now: datetime) -> x509.Certificate | None:
    """A responder certificate the issuer made for OCSP signing (RFC 6960 4.2.2.2)."""
    for cert in response.certificates:
        eku = extension(cert, x509.ExtendedKeyUsage)
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            continue
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            continue
        if _issued_by(cert, issuer):
            return cert
    return None


# --- judging one piece of evidence ----------------------------------------------------------


def _window(this_update: datetime, next_update: datetime | None,
            now: datetime) -> tuple[Unknown, str] | None:
    if this_update > now + CLOCK_SKEW:
        return Unknown.NOT_YET_VALID, f"it is not valid before {this_update:%Y-%m-%d %H:%M} UTC"
    end = next_update or this_update + NO_NEXT_UPDATE_LIFETIME
    if end < now:
        return Unknown.STALE, f"it expired {end:%Y-%m-%d %H:%M} UTC (nextUpdate)"
    return None


def check_ocsp(data: bytes, cert: x509.Certificate, issuer: x509.Certificate | None, *,
               position: int, source: RevocationSource, now: datetime, obtained_at: datetime,
               url: str | None = None) -> RevocationCheck:
    """Judges an OCSP response (stapled or fetched) about `cert`, signed for `issuer`."""
    what = "the stapled OCSP response" if source is RevocationSource.STAPLE else "the OCSP response"

    def unknown(reason: Unknown, detail: str, **more: object) -> RevocationCheck:
        return RevocationCheck(source, position, RevocationStatus.UNKNOWN, obtained_at, reason,
                               f"{what}: {detail}", url, **more)  # type: ignore[arg-type]

    try:
        response = ocsp.load_der_ocsp_response(data)
        status = response.response_status
    except ValueError as exc:
        return unknown(Unknown.MALFORMED, f"not an OCSP response ({exc})")
    if status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return unknown(Unknown.RESPONDER_ERROR, f"the responder answered {status.name.lower()}")
    if issuer is None:
        return unknown(Unknown.NO_ISSUER, "the issuer's certificate is not at hand")
    try:
        single = _single_response(response, cert, issuer)
        if single is None:
            return unknown(Unknown.WRONG_CERTIFICATE, f"it is about another certificate, not "
                                                      f"serial {cert.serial_number:X}")
        signer = issuer if _responder_is(response, issuer) else _delegated_responder(
            response, issuer, now)
        if signer is None or not _signed(signer, response.signature,
                                         response.tbs_response_bytes,
                                         response.signature_hash_algorithm):
            return unknown(Unknown.BAD_SIGNATURE, "it is not signed by the issuer or a responder "
                                                  "the issuer authorised (the wrong key)")
        this_update, next_update = single.this_update_utc, single.next_update_utc
        status_of_cert = single.certificate_status
        revoked_at, code = single.revocation_time_utc, single.revocation_reason
    except ValueError as exc:  # a field cryptography cannot decode
        return unknown(Unknown.MALFORMED, f"it cannot be read ({exc})")
    if (window := _window(this_update, next_update, now)) is not None:
        return unknown(*window, next_update=next_update)
    if status_of_cert is ocsp.OCSPCertStatus.UNKNOWN:
        return unknown(Unknown.UNKNOWN_CERTIFICATE, "the responder does not know the certificate",
                       next_update=next_update)
    if status_of_cert is ocsp.OCSPCertStatus.REVOKED:
        return RevocationCheck(source, position, RevocationStatus.REVOKED, obtained_at, None,
                               f"{what} says revoked", url, revoked_at,
                               code.value if code is not None else None, next_update)
    return RevocationCheck(source, position, RevocationStatus.GOOD, obtained_at, None,
                           f"{what} says good", url, next_update=next_update)


def _single_response(response: ocsp.OCSPResponse, cert: x509.Certificate,
                     issuer: x509.Certificate) -> ocsp.OCSPSingleResponse | None:
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        algorithm = single.hash_algorithm
        key_hash = hashes.Hash(algorithm)
        key_hash.update(_spki_bits(issuer))
        name_hash = hashes.Hash(algorithm)
        name_hash.update(issuer.subject.public_bytes())
        if single.issuer_key_hash == key_hash.finalize() and \
                single.issuer_name_hash == name_hash.finalize():
            return single
    return None


def _spki_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's contents, which OCSP's key hashes cover."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    # SubjectPublicKeyInfo ::= SEQUENCE { algorithm, BIT STRING }: the BIT STRING is last.
    body, _ = _tlv(spki, 0)
    _, after_algorithm = _tlv(body, 0)
    bits, _ = _tlv(body, after_algorithm)
    return bits[1:]  # without the count of unused bits


def _tlv(data: bytes, at: int) -> tuple[bytes, int]:
    """(content, end) of the DER element at `at`."""
    size, start = data[at + 1], at + 2
    if size & 0x80:
        width = size & 0x7F
        size, start = int.from_bytes(data[start:start + width], "big"), start + width
    return data[start:start + size], start + size


def _responder_is(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> bool:
    if response.responder_key_hash is not None:
        digest = hashes.Hash(hashes.SHA1())
        digest.update(_spki_bits(issuer))
        return response.responder_key_hash == digest.finalize()
    return response.responder_name == issuer.subject


def check_crl(crl: CRLIndex, cert: x509.Certificate, issuer: x509.Certificate | None, *,
              position: int, now: datetime) -> RevocationCheck:
    """Judges a CRL for `cert`: the issuer's, signed by it, current, and what it lists."""

    def unknown(reason: Unknown, detail: str) -> RevocationCheck:
        return RevocationCheck(RevocationSource.CRL, position, RevocationStatus.UNKNOWN,
                               crl.fetched_at, reason, f"the CRL {crl.url}: {detail}", crl.url,
                               next_update=crl.next_update)

    if issuer is None:
        return unknown(Unknown.NO_ISSUER, "the issuer's certificate is not at hand")
    if crl.crl.issuer != cert.issuer:
        return unknown(Unknown.WRONG_ISSUER, "it is another CA's CRL")
    if not _crl_signed_by(crl, issuer):
        return unknown(Unknown.BAD_SIGNATURE, "it is not signed by the issuer")
    if (window := _window(crl.crl.last_update_utc, crl.next_update, now)) is not None:
        return unknown(*window)
    entry = crl.revoked.get(cert.serial_number)
    if entry is not None:
        return RevocationCheck(RevocationSource.CRL, position, RevocationStatus.REVOKED,
                               crl.fetched_at, None, f"the CRL {crl.url} lists serial "
                               f"{cert.serial_number:X}", crl.url, entry[0], entry[1],
                               crl.next_update)
    return RevocationCheck(RevocationSource.CRL, position, RevocationStatus.GOOD, crl.fetched_at,
                           None, f"not listed in the CRL {crl.url}", crl.url,
                           next_update=crl.next_update)


def failed(failure: FetchFailure, source: RevocationSource, position: int) -> RevocationCheck:
    """A fetch that gave nothing usable, as a check."""
    return RevocationCheck(source, position, RevocationStatus.UNKNOWN, failure.at, failure.reason,
                           failure.detail, failure.url)


# --- the target's status ------------------------------------------------------------------------


def combine(checks: Iterable[RevocationCheck], *, must_staple_missing: bool = False) -> Revocation:
    """Revoked if any valid evidence says so; good if every certificate that could be
    checked is good by some source; otherwise unknown, with the first reason."""
    checks = tuple(checks)
    missing = must_staple_missing
    for check in checks:
        if check.status is RevocationStatus.REVOKED:
            when = f" on {check.revoked_at:%Y-%m-%d}" if check.revoked_at else ""
            which = "the leaf" if check.position == 0 else f"certificate {check.position}"
            return Revocation(RevocationStatus.REVOKED, check.source, check.checked_at, None,
                              f"{which} is revoked{when}: {check.detail}", checks, missing)
    if not checks:
        return Revocation(RevocationStatus.UNKNOWN, None, None, Unknown.NOT_CHECKED,
                          "nothing to check: no staple, CRL or OCSP responder", checks, missing)
    positions = sorted({c.position for c in checks})
    settled: list[RevocationCheck] = []
    for position in positions:
        good = [c for c in checks if c.position == position and c.status is RevocationStatus.GOOD]
        if not good:
            first = next(c for c in checks if c.position == position)
            return Revocation(RevocationStatus.UNKNOWN, None, None, first.reason, first.detail,
                              checks, missing)
        settled.append(min(good, key=lambda c: list(RevocationSource).index(c.source)))
    leaf = settled[0]
    return Revocation(RevocationStatus.GOOD, leaf.source, min(c.checked_at for c in settled),
                      None, leaf.detail, checks, missing)
