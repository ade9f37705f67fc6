"""The words certwatch speaks: every vocabulary that crosses a stage, as an enumeration.

They are `StrEnum`s, so each member *is* its string: JSON, metric labels, the state
database and log lines carry the same plain values as always, and a value read back
from storage compares equal to the member.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Action", "AlertKind", "ErrorKind", "Phase", "Problem", "Reason", "Severity",
           "SourceKind", "State"]


class State(StrEnum):
    """A target's state. Declaration order is the order series and counts are written in."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    EXPIRED = "expired"
    ERROR = "error"  # no certificate could be fetched

    @property
    def rank(self) -> int:
        """Badness, the one ordering of states (sorting, aggregation, "worst first"):
        a failing probe outranks a warning, a certificate clients refuse outranks both."""
        return _RANK[self]

    @property
    def exit_code(self) -> int:
        """The monitoring-plugin convention: 0 ok, 1 warning, 2 critical, 3 unknown."""
        return _EXIT_CODE[self]

    def worse(self, other: State) -> State:
        return self if self.rank >= other.rank else other

    @classmethod
    def worst_first(cls) -> tuple[State, ...]:
        return tuple(sorted(cls, key=lambda state: state.rank, reverse=True))


_RANK = {State.OK: 0, State.WARNING: 1, State.ERROR: 2, State.CRITICAL: 3, State.EXPIRED: 4}
_EXIT_CODE = {State.OK: 0, State.WARNING: 1, State.CRITICAL: 2, State.EXPIRED: 2, State.ERROR: 3}


class ErrorKind(StrEnum):
    """Why a probe failed (see :mod:`certwatch.sources.wire` for what each means)."""

    DNS = "dns"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    RESET = "reset"
    CLOSED = "closed"
    NOT_TLS = "not_tls"
    STARTTLS_UNSUPPORTED = "starttls_unsupported"
    HANDSHAKE = "handshake"
    CLIENT_CERT = "client_cert"
    NO_CERTIFICATE = "no_certificate"  # the handshake completed without a certificate
    INTERNAL = "internal"
    # Certificates at rest (files, Kubernetes objects): see certwatch.sources.files.
    UNREADABLE = "unreadable"  # the file cannot be read (missing, permissions, too large, ...)
    NOT_A_CERTIFICATE = "not_a_certificate"  # read, but holds no certificate
    BAD_PASSWORD = "bad_password"  # a PKCS#12 file the configured password does not open
    SOURCE = "source"  # the source itself failed (the Kubernetes API did not answer)
    INVALID = "invalid"  # the inventory entry was rejected by validation
    # An egress proxy's refusals (see certwatch.sources.proxy).
    PROXY_AUTH = "proxy_auth"
    PROXY_DENIED = "proxy_denied"
    PROXY_TARGET_UNREACHABLE = "proxy_target_unreachable"
    PROXY_ERROR = "proxy_error"


class Phase(StrEnum):
    """The step of a probe an error happened in."""

    SETUP = "setup"
    DNS = "dns"
    CONNECT = "connect"
    PROXY = "proxy"  # reaching the proxy and its answer to CONNECT
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"
    CONFIG = "config"  # validating the inventory entry
    READ = "read"  # reading a file or an object of the Kubernetes API
    DECODE = "decode"  # decoding what was read (PEM, DER, PKCS#12)


class Problem(StrEnum):
    """A reason clients would reject a chain (offline verification)."""

    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    SELF_SIGNED = "self_signed"
    UNTRUSTED = "untrusted"
    INCOMPLETE_CHAIN = "incomplete_chain"
    HOSTNAME_MISMATCH = "hostname_mismatch"


class Reason(StrEnum):
    """Reasons of an assessment that are neither a Problem nor an ErrorKind."""

    EXPIRED = "expired"
    EXPIRING = "expiring"
    MALFORMED_CERTIFICATE = "malformed_certificate"
    HANDSHAKE_INCOMPLETE = "handshake_incomplete"
    KEY_MISMATCH = "key_mismatch"  # the private key beside the certificate is not its key
    KEY_UNREADABLE = "key_unreadable"  # a private key was given but cannot be decoded
    REVOKED = "revoked"  # the CA revoked a certificate of the chain (staple, CRL or OCSP)
    MUST_STAPLE_MISSING = "must_staple_missing"  # must-staple, served without a valid staple
    RENEWAL_OVERDUE = "renewal_overdue"  # still served after it should have been replaced
    RENEWAL_WINDOW_MOVED = "renewal_window_moved"  # the CA moved its window earlier


class Severity(StrEnum):
    """How urgent an alert is, in rising order."""

    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class AlertKind(StrEnum):
    EXPIRY = "expiry"
    VERIFICATION = "verification"
    PROBE = "probe"
    REVOCATION = "revocation"  # revoked, or must-staple served without a staple
    POLICY = "policy"  # root-program lints: CT policy, maximum validity, distrusted CA
    RENEWAL_OVERDUE = "renewal_overdue"


class Action(StrEnum):
    """What a notification asks of its receiver."""

    TRIGGER = "trigger"
    ESCALATE = "escalate"
    REMIND = "remind"
    RESOLVE = "resolve"


class SourceKind(StrEnum):
    """Where a target's certificate comes from: the `source` of every target."""

    TLS = "tls"  # a handshake over the wire (directly or after STARTTLS)
    FILE = "file"  # a file on disk (PEM, DER, PKCS#12)
    KUBERNETES = "kubernetes"  # a Secret or ConfigMap read through the Kubernetes API
