"""A tiny test PKI on `cryptography`, with control over every field certwatch judges.

trustme is simpler but decides validity dates and extensions for us; certwatch's tests
need expired, not-yet-valid, self-signed, chain-order and missing-AKI certificates.

Keys: leaf keys come from a small pool per key type, shared between leaves, because RSA
generation costs ~65 ms a key (so do not compare leaf public keys across certificates).
CA keys are always fresh, so two CAs never share a key: a leaf must not verify against
the wrong CA by accident just because both CAs drew the same key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_LEAF_KEYS_PER_TYPE = 3
_leaf_keys: dict[str, list[PrivateKey]] = {}
_leaf_key_turns: dict[str, int] = {}


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key and the Issued that signed it (None: self-signed)."""

    cert: x509.Certificate
    key: PrivateKey
    parent: Issued | None

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def chain(self, include_root: bool = False) -> list[x509.Certificate]:
        """This certificate, then its issuers; the self-signed root only if asked.

        A self-signed certificate's own chain is itself: a server must present it.
        """
        chain = [self.cert]
        issuer = self.parent
        while issuer is not None and (include_root or issuer.parent is not None):
            chain.append(issuer.cert)
            issuer = issuer.parent
        return chain

    def write(self, directory: Path, stem: str, *, chain: bool = True) -> tuple[Path, Path]:
        """Write `<stem>.crt` (leaf plus intermediates, or the leaf only) and `<stem>.key`."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = write_pem(directory / f"{stem}.crt", self.chain() if chain else [self.cert])
        key_path = directory / f"{stem}.key"
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


def write_pem(path: Path, certs: Iterable[x509.Certificate]) -> Path:
    """Write certificates as concatenated PEM, in the order given."""
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def make_root(
    common_name: str,
    *,
    not_before: datetime,
    not_after: datetime,
    key_type: str = "ec",
) -> Issued:
    """A self-signed CA. No AKI: many real roots (ISRG Root X1, for one) have none."""
    key = _new_key(key_type)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return _sign(
        subject=_name(common_name),
        key=key,
        issuer=None,
        not_before=not_before,
        not_after=not_after,
        serial=None,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (_ca_key_usage(), True),
            (ski, False),
        ],
    )


def make_intermediate(
    parent: Issued,
    common_name: str,
    *,
    not_before: datetime,
    not_after: datetime,
    key_type: str = "ec",
) -> Issued:
    """A CA below `parent` that may sign leaves only (pathlen 0)."""
    key = _new_key(key_type)
    return _sign(
        subject=_name(common_name),
        key=key,
        issuer=parent,
        not_before=not_before,
        not_after=not_after,
        serial=None,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (_ca_key_usage(), True),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
            (_aki(parent), False),
        ],
    )


def make_leaf(
    parent: Issued | None,
    names: Sequence[str],
    *,
    not_before: datetime,
    not_after: datetime,
    key_type: str = "ec",
    common_name: str | None = None,
    aki: bool = True,
    ski: bool = True,
    serial: int | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """A TLS server certificate signed by `parent`, or self-signed when parent is None.

    `names` become SANs (IP addresses as IPAddress, the rest as DNSName); no names means
    no SAN extension at all (a CN-only legacy certificate). The subject CN is
    `common_name`, else the first name. `extra_extensions` are added, and replace a
    default extension of the same type (pass an ExtendedKeyUsage to change the EKU).
    """
    if common_name is None and not names:
        raise ValueError("make_leaf needs names or a common_name for the subject")
    key = _leaf_key(key_type)
    # TLS 1.2 RSA key exchange encrypts to an RSA key, so such leaves carry keyEncipherment.
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    extensions: dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool]] = {}

    def add(extension: x509.ExtensionType, critical: bool) -> None:
        extensions[extension.oid] = (extension, critical)

    add(x509.BasicConstraints(ca=False, path_length=None), True)
    add(_key_usage(digital_signature=True, key_encipherment=rsa_key), True)
    add(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    if names:
        add(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
    if ski:
        add(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    if aki:
        add(
            _aki(parent)
            if parent is not None
            else x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
            False,
        )
    for extension, critical in extra_extensions:
        add(extension, critical)
    return _sign(
        subject=_name(common_name if common_name is not None else names[0]),
        key=key,
        issuer=parent,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
        extensions=list(extensions.values()),
    )


def _sign(
    *,
    subject: x509.Name,
    key: PrivateKey,
    issuer: Issued | None,
    not_before: datetime,
    not_after: datetime,
    serial: int | None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]],
) -> Issued:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(_utc(not_before, "not_before"))
        .not_valid_after(_utc(not_after, "not_after"))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    signer = issuer.key if issuer is not None else key
    return Issued(builder.sign(signer, hashes.SHA256()), key, issuer)


def _utc(moment: datetime, field: str) -> datetime:
    """Refuse naive datetimes: cryptography would read them as UTC, hiding a local-time bug."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware, got naive {moment!r}")
    return moment


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _aki(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    """Point at the issuer's SKI when it has one, as real CAs do."""
    try:
        ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_key_usage() -> x509.KeyUsage:
    return _key_usage(key_cert_sign=True, crl_sign=True)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_spec(key_type: str) -> str:
    """Normalise "ec", "rsa" and "rsa:<bits>" to one spelling per key ("ec", "rsa:2048")."""
    kind, _, bits = key_type.partition(":")
    if kind == "ec" and not bits:
        return "ec"
    if kind == "rsa" and (not bits or bits.isdigit()):
        return f"rsa:{bits or 2048}"
    raise ValueError(f"unknown key_type {key_type!r}; expected 'ec', 'rsa' or 'rsa:<bits>'")


def _new_key(key_type: str) -> PrivateKey:
    spec = _key_spec(key_type)
    if spec == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(spec[len("rsa:") :]))


def _leaf_key(key_type: str) -> PrivateKey:
    """Fill the pool for this key type, then hand its keys out in turn."""
    spec = _key_spec(key_type)
    pool = _leaf_keys.setdefault(spec, [])
    if len(pool) < _LEAF_KEYS_PER_TYPE:
        pool.append(_new_key(spec))
        return pool[-1]
    turn = _leaf_key_turns.get(spec, 0)
    _leaf_key_turns[spec] = turn + 1
    return pool[turn % len(pool)]
