"""The inventory as values: what to watch, and how (the configuration kit builds them).

Nothing here reads a file or the network; paths are kept as paths.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from certwatch.core.ctpolicy import CTLogList
from certwatch.core.names import ip_literal
from certwatch.core.rootprograms import DistrustRule
from certwatch.core.selections import KubernetesAccess, Selection

__all__ = [
    "ADDRESS_MODES", "DEFAULT_LISTEN", "METRIC_GROUPS", "PROTOCOLS", "RESERVED_LABELS",
    "TLS_ALIASES", "URL_SCHEMES", "AlertSettings", "Defaults", "Endpoint", "Inventory", "Proxy",
    "AllowList", "ProbeModule", "ProbeSettings", "RevocationSettings", "SharedState",
    "Thresholds",
    "is_ip", "split_listen",
    "CRITICAL_FRACTION", "RENEWAL_DUE_FRACTION", "WARN_FRACTION",
]

# STARTTLS protocols and the port each is usually found on.
PROTOCOLS: dict[str, int] = {
    "tls": 443,
    "smtp": 25,
    "imap": 143,
    "pop3": 110,
    "ftp": 21,
    "ldap": 389,
    "postgres": 5432,
    "xmpp": 5222,
    "mysql": 3306,  # MariaDB too: the SSL request in the handshake response
}
# Implicit-TLS names people write: they are plain `tls` on their own port.
TLS_ALIASES: dict[str, int] = {
    "https": 443,
    "smtps": 465,
    "submissions": 465,
    "imaps": 993,
    "pop3s": 995,
    "ldaps": 636,
    "ftps": 990,
}
URL_SCHEMES: dict[str, str] = {
    **{alias: "tls" for alias in TLS_ALIASES},
    **{name: name for name in PROTOCOLS},
    "postgresql": "postgres",
}
ADDRESS_MODES = ("all", "first", "ipv4", "ipv6")
# Label names certwatch itself puts on every series; user labels may not shadow them.
RESERVED_LABELS = frozenset(
    {"name", "host", "port", "address", "server_name", "protocol", "job", "instance",
     # labels certwatch's own series add beside the target's
     "state", "problem", "position", "role", "serial", "fingerprint_sha256", "subject",
     "issuer", "key_type", "signature_algorithm", "kind", "phase", "version", "cipher",
     "source", "location", "status", "method", "reason", "lint", "severity"}
)
DEFAULT_LISTEN = ":9795"  # no well-known exporter uses 9795 (blackbox 9115, ssl_exporter 9219)
# Opt-in groups of per-target metric families beyond the default ones
# (certwatch.render.exposition.EXTRA_GROUPS says what each adds).
METRIC_GROUPS = ("probe", "leaf", "chain", "verification", "tls", "revocation")


# The lifetime-aware defaults (see certwatch.core.policy and the README's table): warn
# when less than a third of the lifetime is left, page below a fifth. A 90-day or longer
# certificate keeps the fixed 30/7 days; a 6-day one warns at 2 days and pages at 1.2.
WARN_FRACTION = 1 / 3
CRITICAL_FRACTION = 1 / 5
# Without the CA's renewal window, a leaf still served after this share of its lifetime
# is overdue for renewal (see certwatch.core.renewal for why 0.7).
RENEWAL_DUE_FRACTION = 0.7


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When an expiring certificate warns and pages: below the days left, or below the
    share of its own lifetime left, whichever comes later (a fraction of 1 leaves the
    fixed days alone)."""

    warn_days: float = 30.0
    critical_days: float = 7.0
    warn_fraction: float = WARN_FRACTION
    critical_fraction: float = CRITICAL_FRACTION


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP CONNECT proxy an endpoint is reached through. The proxy resolves the
    endpoint's name: certwatch does no DNS for it. The password never shows in a repr."""

    host: str  # a name (as an A-label) or an IP literal
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The proxy as shown to people and in JSON: never with credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RevocationSettings:
    """Which revocation checks run for an endpoint. Each soft-fails: a check that cannot
    be made says so and leaves the state alone."""

    staple: bool = True  # ask for the stapled OCSP response and check it
    crl: bool = True  # fetch the CRLs the chain names and check them
    ocsp: bool = False  # ask the certificate's OCSP responder (AIA)
    timeout: float = 5.0  # seconds a fetch may take, all of it


@dataclass(frozen=True, slots=True)
class Defaults:
    """Settings every endpoint inherits unless it overrides them."""

    timeout: float = 10.0  # seconds, for each phase: DNS, connect, STARTTLS, handshake
    warn_days: float = 30.0
    critical_days: float = 7.0
    verify: bool = True
    system_trust: bool = True  # trust the operating system's roots as well as ca_file
    ca_file: Path | None = None
    addresses: str = "all"
    interval: float = 3600.0  # seconds between probes of a target
    retry_interval: float = 300.0  # sooner, after a failed probe
    proxy: Proxy | None = None
    revocation: RevocationSettings = RevocationSettings()
    warn_fraction: float = WARN_FRACTION
    critical_fraction: float = CRITICAL_FRACTION
    acme_directory: str | None = None  # the CA's ACME directory URL, for renewalInfo
    renewal_due_fraction: float = RENEWAL_DUE_FRACTION


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One inventory entry. It expands to one target per address when probed."""

    name: str
    host: str
    port: int
    protocol: str = "tls"
    # SNI and the name verified against the certificate; None sends no SNI (the host
    # is then verified, which is how an IP literal is checked against IP SANs).
    server_name: str | None = None
    addresses: str = "all"
    timeout: float = 10.0
    warn_days: float = 30.0
    critical_days: float = 7.0
    verify: bool = True
    system_trust: bool = True
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    labels: tuple[tuple[str, str], ...] = ()
    interval: float = 3600.0
    retry_interval: float = 300.0
    # Where its certificates come from (a SourceKind), and what a source other than the
    # wire reads; `rejected` holds why validation refused the entry (then it is a target
    # in state error, and nothing is probed).
    source: str = "tls"
    selection: Selection | None = None
    rejected: tuple[str, ...] = ()
    origin: str | None = None  # where a discovered endpoint was found: "ingress <ns>/<name>"
    # Reached through this proxy, which resolves `host`: the endpoint is then one target,
    # whose address is `host` itself (what the CONNECT asked for).
    proxy: Proxy | None = None
    revocation: RevocationSettings = RevocationSettings()
    warn_fraction: float = WARN_FRACTION
    critical_fraction: float = CRITICAL_FRACTION
    acme_directory: str | None = None
    renewal_due_fraction: float = RENEWAL_DUE_FRACTION

    @property
    def verify_name(self) -> str:
        """The name the certificate must match."""
        return self.server_name or self.host

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.warn_days, self.critical_days, self.warn_fraction,
                          self.critical_fraction)


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """The `alerts:` section, validated; `sinks` are the sinks' settings."""

    state_dir: Path = Path("/var/lib/certwatch")
    external_url: str | None = None
    repeat_warning: float = 86400.0  # re-send an open warning daily
    repeat_critical: float = 4 * 3600.0
    probe_failures: int = 3  # consecutive failed probes before a probe alert
    retry_initial: float = 5.0
    retry_max: float = 300.0
    give_up_after: float = 86400.0
    sinks: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class SharedState:
    """A state database that replicas share: PostgreSQL. The password never shows in a
    repr, and the URL holds none."""

    url: str  # postgresql://user@host:port/database
    password: str | None = field(default=None, repr=False)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AllowList:
    """What `/probe` may connect to. Empty: nothing."""

    networks: tuple[Network, ...] = ()
    names: tuple[str, ...] = ()  # glob patterns of A-labels, lower case: "*.example.com"

    def allows_address(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def allows_name(self, host: str) -> bool:
        """`*` matches within and across labels: "*.example.com" allows every name below
        example.com, not example.com itself."""
        host = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.names)


@dataclass(frozen=True, slots=True)
class ProbeModule:
    """A module: the endpoint options as a template (its host is a placeholder)."""

    name: str
    template: Endpoint
    fixed_server_name: bool = False  # the module names the SNI; else it is the target's host


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """The `probe:` section."""

    allow: AllowList = field(default_factory=AllowList)
    modules: Mapping[str, ProbeModule] = field(default_factory=dict)
    default: ProbeModule | None = None  # the file's defaults
    max_concurrency: int = 16  # probes under way at once; more wait (within their deadline)
    timeout_offset: float = 0.5  # seconds kept back from the scrape's timeout for the answer


@dataclass(frozen=True, slots=True)
class Inventory:
    endpoints: tuple[Endpoint, ...]
    defaults: Defaults = field(default_factory=Defaults)
    max_concurrency: int = 100
    listen: str = DEFAULT_LISTEN  # the daemon's HTTP server: "HOST:PORT" or ":PORT"
    demo: bool = False  # start local demo endpoints and watch them too
    alerts: AlertSettings | None = None  # None: no notifications
    source: str = "<inventory>"
    kubernetes: KubernetesAccess | None = None  # how the kubernetes entries reach the API
    strict: bool = False  # any invalid entry rejects the whole file
    problems: tuple[str, ...] = ()  # the invalid entries' problems (each is a target in error)
    distrust: tuple[DistrustRule, ...] = ()  # the inventory's own rows, beside the shipped
    ct_log_list: CTLogList | None = None  # None: the shipped log list
    # Where the state database lives (certificate history; alert state too). None: the
    # history is kept in memory only, and a restart forgets it.
    state_dir: Path | None = None
    state: SharedState | None = None  # `state: postgresql://...`: it replaces state_dir
    probe: ProbeSettings | None = None  # the /probe settings; None: /probe refuses everything
    # The opt-in groups of per-target metric families (METRIC_GROUPS) that are on.
    metrics_extra: frozenset[str] = frozenset()

    @property
    def state_location(self) -> Path | SharedState | None:
        """Where the state database is: PostgreSQL, a directory, or nowhere (memory)."""
        return self.state if self.state is not None else self.state_dir


@functools.lru_cache(maxsize=1024)
def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 literal. Memoised: every probe asks of its endpoint's
    host, and parsing an address costs a few microseconds."""
    return ip_literal(text) is not None


def split_listen(listen: str) -> tuple[str | None, int]:
    """ "HOST:PORT", "[V6]:PORT" or ":PORT" (every interface) as (host or None, port)."""
    host, _, port = listen.rpartition(":")
    return (host.strip("[]") or None), int(port)
