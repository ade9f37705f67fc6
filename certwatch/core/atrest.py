"""Certificates at rest (files, Kubernetes Secrets): their chains, their verification, their keys.

Pure: certificates and keys in, values out. A certificate in a file has no host name
to be checked against, so what is verified is the chain and the dates:

- the chain is the certificate followed by its issuers found in the same file or
  object (:func:`issuer_path`, by name and signature), ending at a root of the trust
  store (the system's roots unless `system_trust: false`, plus `ca_file`);
- a self-signed CA certificate is a root: it is its own anchor, judged on its dates;
- problems are named as on the wire: `self_signed` (a self-signed certificate that is no
  CA and not in the trust store), `incomplete_chain` (an issuer neither in the file nor
  trusted), `untrusted` (the chain ends at a root the trust store does not hold),
  `expired` and `not_yet_valid` (any certificate of the chain, now).

There is no `hostname_mismatch`: the verification says it checked no name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certwatch.core.observation import KeyCheck
from certwatch.core.verify import TrustStore, Verification, time_problems
from certwatch.core.vocabulary import Problem, Reason
from certwatch.core.x509 import ParsedChain, names_of, sha256_hex

__all__ = ["issuer_path", "key_check", "verify_at_rest"]

MAX_PATH = 16  # certificates on one path: more is a loop or a hostile file


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001 - any failure means "not its issuer"
        return False
    return True


def issuer_path(index: int, certs: Sequence[x509.Certificate]) -> tuple[int, ...]:
    """The indexes of `certs[index]` and of its issuers among `certs`, leaf first: each
    next one names the previous one's issuer as its subject and signed it."""
    by_subject: dict[object, list[int]] = {}
    for i, cert in enumerate(certs):
        by_subject.setdefault(names_of(cert)[0], []).append(i)
    path = [index]
    while len(path) < MAX_PATH:
        current = certs[path[-1]]
        subject, issuer = names_of(current)
        if subject == issuer:
            break  # a root
        found = next((i for i in by_subject.get(issuer, ()) if i not in path
                      and _issued_by(current, certs[i])), None)
        if found is None:
            break
        path.append(found)
    return tuple(path)


def _trusted_issuer(cert: x509.Certificate, trust: TrustStore) -> x509.Certificate | None:
    issuer = names_of(cert)[1]
    if issuer not in trust.subjects:
        return None
    return next((root for root in trust.roots
                 if names_of(root)[0] == issuer and _issued_by(cert, root)), None)


def verify_at_rest(chain: ParsedChain, trust: TrustStore, now: datetime) -> Verification:
    """Judges a certificate at rest (position 0) and its issuers from the same file."""
    if not chain.infos:
        return Verification(False, True, (Problem.UNTRUSTED,), "no certificate to verify",
                            name_checked=False)
    infos, certs = chain.infos, chain.certificates
    trusted_roots = {sha256_hex(root) for root in trust.roots}
    problems: list[Problem] = []
    details: list[str] = []
    path = infos
    anchored = next((i for i, c in enumerate(infos) if c.fingerprint_sha256 in trusted_roots), None)
    top, top_info = certs[-1], infos[-1]
    if anchored is not None:
        path = infos[: anchored + 1]
    elif top_info.self_issued and (top_info.is_ca and len(infos) == 1):
        pass  # a root at rest is its own anchor
    elif (root := _trusted_issuer(top, trust)) is not None:
        path = (*infos, trust.infos[sha256_hex(root)]) if sha256_hex(root) in trust.infos else infos
    elif top_info.self_issued and len(infos) == 1:
        problems.append(Problem.SELF_SIGNED)
        details.append("the certificate is self-signed, not a CA, and not a trusted root")
    elif top_info.self_issued:
        problems.append(Problem.UNTRUSTED)
        details.append(f"the chain ends at a root that is not trusted ({top_info.subject}); "
                       "give it as ca_file if it is yours")
    else:
        problems.append(Problem.INCOMPLETE_CHAIN)
        details.append(f"the issuer of certificate {top_info.position} ({top_info.issuer}) is "
                       "neither beside it nor a trusted root")
    trusted = not problems
    timing, timing_details = time_problems(path, now)
    return Verification(trusted, True, (*problems, *timing), "; ".join([*details, *timing_details]),
                        path if trusted else (), name_checked=False)


def _public_der(key: object) -> bytes | None:
    try:
        return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined, no-any-return]
    except Exception:  # noqa: BLE001 - a key type without a public form
        return None


def key_check(cert: x509.Certificate, key: PrivateKeyTypes, where: str) -> KeyCheck:
    """Whether `key` (found at `where`) is the private key of `cert`."""
    mine = _public_der(key.public_key())
    try:
        theirs = _public_der(cert.public_key())
    except Exception:  # noqa: BLE001 - an unsupported key type in the certificate
        theirs = None
    if mine is not None and mine == theirs:
        return KeyCheck(where)
    return KeyCheck(where, Reason.KEY_MISMATCH,
                    f"the private key in {where} does not belong to the certificate")
