"""A tiny test PKI on `cryptography`, with control over every field certwatch judges.

trustme is simpler but decides validity dates and extensions for us; certwatch's tests
need expired, not-yet-valid, self-signed, chain-order and missing-AKI certificates.

Keys: leaf keys come from a small pool per key type, shared between leaves, because RSA
generation costs ~65 ms a key (so do not compare leaf public keys across certificates).
CA keys are always fresh, so two CAs never share a key: a leaf must not verify against
the wrong CA by accident just because both CAs drew the same key.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
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
    path_length: int | None = 0,
) -> Issued:
    """A CA below `parent` that may sign leaves only (pathlen 0), unless told otherwise."""
    key = _new_key(key_type)
    return _sign(
        subject=_name(common_name),
        key=key,
        issuer=parent,
        not_before=not_before,
        not_after=not_after,
        serial=None,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=path_length), True),
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


# --- hand-made certificates: what CertificateBuilder refuses to write ------------------
#
# cryptography's builder will not write a negative or zero serial, a validity that ends
# before it starts, a v1 certificate or a name whose bytes are not valid text, nor make
# an RSA key under 1024 bits. Peers send all of these, so the helpers below take a
# certificate the builder made, edit the fields of its TBSCertificate as DER and sign
# the result again with the issuer's key. They return DER bytes: cryptography may refuse
# to load what they make, which is the point of some tests.

# The fields of a v3 TBSCertificate, as CertificateBuilder writes them (RFC 5280 4.1).
TBS_VERSION, TBS_SERIAL, TBS_SIGNATURE, TBS_ISSUER, TBS_VALIDITY, TBS_SUBJECT, TBS_SPKI, \
    TBS_EXTENSIONS = range(8)


def der_tlv(tag: int, content: bytes) -> bytes:
    """One DER element (single-byte tag, definite length)."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def der_children(element: bytes) -> list[bytes]:
    """The elements (whole TLVs) inside one constructed DER element."""
    content = _der_content(element)
    children, pos = [], 0
    while pos < len(content):
        size = _der_header_size(content[pos:]) + len(_der_content(content[pos:]))
        children.append(content[pos : pos + size])
        pos += size
    return children


def _der_header_size(element: bytes) -> int:
    return 2 + (element[1] & 0x7F if element[1] & 0x80 else 0)


def _der_content(element: bytes) -> bytes:
    first = element[1]
    if first & 0x80:
        width = first & 0x7F
        size = int.from_bytes(element[2 : 2 + width], "big")
        return element[2 + width : 2 + width + size]
    return element[2 : 2 + first]


def der_integer(value: int) -> bytes:
    """An INTEGER in two's complement, negative values and zero included."""
    size = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return der_tlv(0x02, value.to_bytes(size, "big", signed=True))


def der_name(*attributes: tuple[x509.ObjectIdentifier, int, bytes]) -> bytes:
    """A Name of one RDN per (oid, ASN.1 string tag, raw value bytes): the bytes are
    written as given, whether or not they are valid for the tag (0x0C UTF8String,
    0x13 PrintableString, 0x14 T61String, 0x1C UniversalString, 0x1E BMPString)."""
    rdns = b"".join(
        der_tlv(0x31, der_tlv(0x30, _der_oid(oid) + der_tlv(tag, value)))
        for oid, tag, value in attributes
    )
    return der_tlv(0x30, rdns)


def _der_oid(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytes([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.insert(0, 0x80 | (arc & 0x7F))
        body += bytes(chunk)
    return der_tlv(0x06, body)


def der_time(moment: datetime) -> bytes:
    """UTCTime for 1950-2049, GeneralizedTime otherwise, as RFC 5280 4.1.2.5 says."""
    moment = _utc(moment, "moment").astimezone(timezone.utc)
    if 1950 <= moment.year < 2050:
        return der_tlv(0x17, moment.strftime("%y%m%d%H%M%SZ").encode())
    return der_tlv(0x18, f"{moment.year:04d}{moment.strftime('%m%d%H%M%S')}Z".encode())


def tbs_fields(cert: x509.Certificate) -> list[bytes]:
    """The TBSCertificate's fields as DER elements; see the TBS_* indices."""
    return der_children(cert.tbs_certificate_bytes)


def resign(issued: Issued, fields: Sequence[bytes], *, signer: PrivateKey | None = None) -> bytes:
    """A certificate (DER) of the given TBSCertificate fields, signed again by
    `issued`'s issuer (or `signer`) with the signature algorithm it already names."""
    key = signer or (issued.parent.key if issued.parent is not None else issued.key)
    tbs = der_tlv(0x30, b"".join(fields))
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = der_children(issued.cert.public_bytes(serialization.Encoding.DER))[1]
    return der_tlv(0x30, tbs + algorithm + der_tlv(0x03, b"\x00" + signature))


def with_serial(issued: Issued, serial: int) -> bytes:
    """`issued` with any serial, negative and zero included (DER)."""
    fields = tbs_fields(issued.cert)
    fields[TBS_SERIAL] = der_integer(serial)
    return resign(issued, fields)


def with_validity(issued: Issued, not_before: datetime, not_after: datetime) -> bytes:
    """`issued` with any validity, one that ends before it starts included (DER)."""
    fields = tbs_fields(issued.cert)
    fields[TBS_VALIDITY] = der_tlv(0x30, der_time(not_before) + der_time(not_after))
    return resign(issued, fields)


def as_version_1(issued: Issued) -> bytes:
    """`issued` as an X.509 v1 certificate: no version field, no extensions (DER)."""
    fields = tbs_fields(issued.cert)
    return resign(issued, fields[TBS_SERIAL:TBS_EXTENSIONS])


def with_names(issued: Issued, *, subject: bytes | None = None, issuer: bytes | None = None) -> bytes:
    """`issued` with a raw subject and/or issuer Name (see der_name) (DER)."""
    fields = tbs_fields(issued.cert)
    if subject is not None:
        fields[TBS_SUBJECT] = subject
    if issuer is not None:
        fields[TBS_ISSUER] = issuer
    return resign(issued, fields)


def der_to_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def write_chain(directory: Path, stem: str, chain: Sequence[bytes], key: PrivateKey) -> tuple[Path, Path]:
    """Write DER certificates as `<stem>.crt` (PEM, in order) and `key` as `<stem>.key`,
    for a server to load with load_cert_chain."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    cert_path.write_bytes(b"".join(der_to_pem(der) for der in chain))
    key_path = directory / f"{stem}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def weak_rsa_key(bits: int = 512) -> rsa.RSAPrivateKey:
    """An RSA key of any size: cryptography generates none under 1024 bits, but loads
    one made from its numbers (two random primes, Miller-Rabin tested)."""
    e = 65537
    while True:
        p, q = _random_prime(bits // 2), _random_prime(bits - bits // 2)
        if p != q and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key()


def _random_prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (0b11 << (bits - 2)) | 1
        if (candidate - 1) % 65537 and _probably_prime(candidate):
            return candidate


def _probably_prime(n: int, rounds: int = 32) -> bool:
    for small in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % small == 0:
            return n == small
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def make_leaf_with_key(
    parent: Issued,
    names: Sequence[str],
    key: PrivateKey,
    *,
    not_before: datetime,
    not_after: datetime,
) -> Issued:
    """A leaf for a key of the caller's (a weak RSA key, say), signed by `parent`."""
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    return _sign(
        subject=_name(names[0]),
        key=key,
        issuer=parent,
        not_before=not_before,
        not_after=not_after,
        serial=None,
        extensions=[
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(digital_signature=True, key_encipherment=rsa_key), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName([_general_name(n) for n in names]), False),
            (_aki(parent), False),
        ],
    )


def make_ca_chain(root: Issued, depth: int, *, not_before: datetime, not_after: datetime) -> list[Issued]:
    """`depth` CAs below `root`, each signing the next (no path length limit), deepest
    last: a chain as long as a test wants."""
    chain, parent = [], root
    for level in range(1, depth + 1):
        key = ec.generate_private_key(ec.SECP256R1())
        parent = _sign(
            subject=_name(f"Deep CA {level}"),
            key=key,
            issuer=parent,
            not_before=not_before,
            not_after=not_after,
            serial=None,
            extensions=[
                (x509.BasicConstraints(ca=True, path_length=None), True),
                (_ca_key_usage(), True),
                (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
                (_aki(parent), False),
            ],
        )
        chain.append(parent)
    return chain
