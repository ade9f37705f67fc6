"""Command line: `certwatch run` (the daemon), `certwatch check` and `certwatch validate`.

Exit codes follow the monitoring-plugin convention so `check` drops into Nagios,
Icinga or a cron job: 0 ok, 1 warning, 2 critical or expired, 3 error/unknown. With
several targets the worst wins, critical over unknown over warning. A usage error or a
configuration that cannot be used is unknown (3) for `check` and `validate`; `run`
exits 2 when it cannot start (a bad configuration, an address it cannot listen on).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence, TextIO
from urllib.parse import urlsplit

from certwatch import __version__, eventloop
from certwatch.config import ConfigError, build_inventory, load_configuration, load_inventory
from certwatch.config.inventory import listen_problem
from certwatch.core.assess import Assessment
from certwatch.core.inventory import PROTOCOLS, TLS_ALIASES, Inventory
from certwatch.core.sharding import WHOLE, Shard, parse_shard
from certwatch.core.vocabulary import State
from certwatch.logs import configure_logging
from certwatch.render.report import assessment_to_dict, render_table, sort_key
from certwatch.config.refusals import policy_for
from certwatch.sources.registry import Sources
from certwatch.sources.revocation import RefusalChecks
from certwatch.sweep import Judged, sweep
from certwatch.sources.ari import RenewalInfoFetcher

__all__ = ["main"]

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3
STRICT_HELP = ("refuse the whole inventory when any entry is invalid (as `strict: true` in the "
               "file does); by default an invalid entry is a target in error")


def exit_code(assessments: Sequence[Assessment]) -> int:
    codes = {a.state.exit_code for a in assessments}
    for code in (EXIT_CRITICAL, EXIT_UNKNOWN, EXIT_WARNING):
        if code in codes:
            return code
    return EXIT_OK if assessments else EXIT_UNKNOWN


def _ad_hoc_endpoint(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """HOST, HOST:PORT, [V6]:PORT or a URL such as smtp://mail.example.com."""
    entry: dict[str, Any]
    if "://" in spec:
        entry = {"url": spec}
    else:
        parts = urlsplit(f"//{spec}")
        try:
            port = parts.port
        except ValueError:
            port = -1  # reported by validation as a bad port
        entry = {"host": parts.hostname or spec, "protocol": args.protocol}
        if port is not None:
            entry["port"] = port
    for option in ("warn_days", "critical_days", "timeout", "ca_file", "addresses", "proxy_url",
                   "proxy_username", "proxy_password_env", "warn_fraction", "critical_fraction",
                   "acme_directory"):
        if getattr(args, option) is not None:
            entry[option] = getattr(args, option)
    if args.server_name is not None:
        entry["server_name"] = False if args.server_name == "" else args.server_name
    if args.insecure:
        entry["verify"] = False
    if args.no_revocation:
        entry["revocation"] = False
    elif args.ocsp:
        entry["revocation"] = {"ocsp": True}
    return entry


def _load(args: argparse.Namespace) -> Inventory:
    if args.targets:
        document = {"endpoints": [_ad_hoc_endpoint(t, args) for t in args.targets]}
        return build_inventory(document, source="command line", environ=os.environ,
                               with_sinks=False, strict=args.strict)
    # The environment holds the PKCS#12 and proxy passwords; the alert sinks are not read.
    return load_inventory(args.config, environ=os.environ, with_sinks=False, strict=args.strict)


async def _check(inventory: Inventory, refusals: RefusalChecks,
                 progress: ProgressBar | None) -> list[Assessment]:
    """Every entry observed once; with `demo: true` the demo endpoints too, started for
    the check as the daemon starts them."""
    if not inventory.demo:
        return await _sweep_all(inventory, refusals, progress)
    from certwatch.daemon.demo import DemoEndpoints, with_demo  # only `demo: true` needs it

    with tempfile.TemporaryDirectory(prefix="certwatch-demo-") as directory:
        try:
            async with DemoEndpoints(Path(directory), renew_after=None) as demo:
                return await _sweep_all(with_demo(inventory, demo), refusals, progress)
        except OSError as exc:  # no loopback to listen on, say
            print(f"{inventory.source}: demo: true, but the demo endpoints cannot start "
                  f"({exc.strerror or exc}); checking the other endpoints", file=sys.stderr)
    return await _sweep_all(inventory, refusals, progress)


async def _sweep_all(inventory: Inventory, refusals: RefusalChecks,
                     progress: ProgressBar | None) -> list[Assessment]:
    """Every entry observed once by its source, and the endpoints they discover."""
    sources = Sources(inventory)
    renewal = (RenewalInfoFetcher() if any(e.acme_directory for e in inventory.endpoints)
               else None)
    try:
        discovered = await sources.discover(inventory.endpoints)
        if progress is not None:
            progress.total = len(inventory.endpoints) + len(discovered)
        return await sweep([*inventory.endpoints, *discovered], sources, refusals=refusals,
                           progress=progress, renewal=renewal)
    finally:
        await sources.close()
        await refusals.aclose()
        if renewal is not None:
            await renewal.aclose()


def _print_entry_problems(inventory: Inventory) -> None:
    """The invalid entries, as a refused file's problems are shown."""
    if inventory.problems:
        print(ConfigError(inventory.source, inventory.problems), file=sys.stderr)


class ProgressBar:
    """One line on a terminal: a bar, the endpoints done and the errors so far, redrawn at
    most every `interval` seconds and cleared at the end (the table follows on stdout)."""

    WIDTH = 24

    def __init__(self, stream: TextIO, total: int, *, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.total, self.interval, self.clock = stream, total, interval, clock
        self.done = self.errors = 0
        self._drawn = float("-inf")
        self._draw()

    def __call__(self, judged: Judged) -> None:
        self.done += 1
        self.errors += sum(1 for a in judged.assessments if a.state is State.ERROR)
        if self.done == self.total or self.clock() - self._drawn >= self.interval:
            self._draw()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // max(self.total, 1)
        errors = f"{self.errors} error{'' if self.errors == 1 else 's'}"
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                          f"{self.done}/{self.total} endpoints, {errors}")
        self.stream.flush()
        self._drawn = self.clock()

    def clear(self) -> None:
        self.stream.write("\r\x1b[K")  # back to the start of the line, and erase it
        self.stream.flush()


def use_colour(choice: str, stream: TextIO, environ: Mapping[str, str]) -> bool:
    """--colour always/never, or auto: on a terminal unless NO_COLOR is set (no-color.org:
    present and not empty; a command-line choice overrides it)."""
    if choice != "auto":
        return choice == "always"
    return stream.isatty() and not environ.get("NO_COLOR")


def cmd_check(args: argparse.Namespace) -> int:
    bar = None
    try:
        inventory = _load(args)
        _print_entry_problems(inventory)
        refusals = RefusalChecks(policy_for(inventory.distrust, inventory.ct_log_list))
        # Progress on stderr only when a person watches it; a pipe or a log gets nothing.
        bar = ProgressBar(sys.stderr, len(inventory.endpoints)) if sys.stderr.isatty() else None
        assessments = sorted(eventloop.run(_check(inventory, refusals, bar)), key=sort_key)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNKNOWN
    finally:
        if bar is not None:
            bar.clear()
    if args.format == "json":
        json.dump([assessment_to_dict(a) for a in assessments], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_table(assessments, colour=use_colour(args.colour, sys.stdout, os.environ)))
    return exit_code(assessments)


def cmd_validate(args: argparse.Namespace) -> int:
    from certwatch.serving.tls import tls_problem  # loads the TLS pair, as `run` would

    try:
        inventory, web = load_configuration(args.config, args.web_config, os.environ, tls_problem,
                                            strict=args.strict)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNKNOWN
    if inventory.problems:  # `run` would probe the rest; validation still fails
        _print_entry_problems(inventory)
        return EXIT_UNKNOWN
    print(f"{args.config}: ok, {len(inventory.endpoints)} endpoints")
    if web is not None:
        print(f"{args.web_config}: ok, " + ("TLS" if web.tls else "no TLS")
              + f", {len(web.basic_auth_users)} basic auth users")
    return 0


SHARD_INDEX_ENV = "CERTWATCH_SHARD_INDEX"  # a StatefulSet fills it from the pod-index label


def shard_of(args: argparse.Namespace, environ: Mapping[str, str]) -> Shard:
    """`--shard INDEX/COUNT`, or `--shard-count COUNT` with the index from the
    environment (the StatefulSet pod index, through the downward API); ValueError says
    what is wrong."""
    if args.shard is not None and args.shard_count is not None:
        raise ValueError("give either --shard INDEX/COUNT or --shard-count, not both")
    if args.shard is not None:
        return parse_shard(args.shard)
    if args.shard_count is None:
        return WHOLE
    index = environ.get(SHARD_INDEX_ENV, "").strip()
    if not index:
        raise ValueError(f"--shard-count needs the shard index in ${SHARD_INDEX_ENV} (on "
                         "Kubernetes: the pod's apps.kubernetes.io/pod-index label through "
                         "the downward API)")
    return parse_shard(f"{index}/{args.shard_count}")


def cmd_run(args: argparse.Namespace) -> int:
    import prometheus_client

    from certwatch.daemon import Daemon  # the daemon's dependencies are not needed by check
    from certwatch.serving.listener import ListenerLimits

    try:
        shard = shard_of(args, os.environ)
    except ValueError as exc:
        print(f"certwatch run: {exc}", file=sys.stderr)
        return 2
    # `_created` series double every counter for little use; the shell sets this once.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    if args.listen is not None and (problem := listen_problem(args.listen)) is not None:
        logging.getLogger("certwatch.daemon").error("--listen: %s",
                                                    problem.replace("'listen' ", "", 1))
        return 2
    given = {"max_connections": args.max_connections, "handshake_timeout": args.header_timeout,
             "header_timeout": args.header_timeout}
    limits = ListenerLimits(**{k: v for k, v in given.items() if v is not None})
    return eventloop.run(Daemon(args.config, listen=args.listen,
                                reload_poll=args.reload_interval, grace=args.grace,
                                web_config_path=args.web_config, strict=args.strict,
                                limits=limits, shard=shard).run())


class _Parser(argparse.ArgumentParser):
    """A usage error exits 3 (unknown), not argparse's 2: under the monitoring-plugin
    convention 2 says critical, and a mistyped option says nothing about a certificate."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNKNOWN, f"{self.prog}: error: {message}\n")


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--log-level and --log-format, accepted before and after the subcommand. After it
    they have no default of their own, so that one given before is not overwritten."""
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default=None if defaults else argparse.SUPPRESS,
                        help="default: info for run, warning otherwise")
    parser.add_argument("--log-format", choices=["auto", "json", "text"],
                        default="auto" if defaults else argparse.SUPPRESS,
                        help="auto: text on a terminal, JSON lines otherwise")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="certwatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"certwatch {__version__}")
    _global_options(parser, defaults=True)
    common = _Parser(add_help=False)
    _global_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", parents=[common], help="run the monitoring daemon",
        description="Probe the inventory on a schedule and serve /metrics, the JSON API and "
                    "the status page. SIGHUP or an edit of the file reloads it.")
    run.add_argument("-c", "--config", type=Path, default=Path("config/certwatch.yaml"),
                     help="inventory file (default: %(default)s)")
    run.add_argument("--listen", help="HOST:PORT or :PORT for HTTP (default: the inventory's "
                                      "'listen', else :9795)")
    run.add_argument("--reload-interval", type=float, default=5.0, metavar="SECONDS",
                     help="how often to check the inventory file for changes")
    run.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                     help="on SIGTERM, how long probes in flight may take to finish")
    run.add_argument("--web.config.file", "--web-config", dest="web_config", type=Path,
                     metavar="FILE",
                     help="TLS, client certificates and basic auth for the HTTP server, in "
                          "Prometheus exporter-toolkit's web configuration format")
    run.add_argument("--strict", action="store_true", help=STRICT_HELP)
    run.add_argument("--web.max-connections", dest="max_connections", type=_positive(int),
                     metavar="N",
                     help="HTTP connections open at once (default 256); at the cap a new "
                          "one closes the one that waited longest without a request")
    run.add_argument("--web.read-header-timeout", dest="header_timeout",
                     type=_positive(float), metavar="SECONDS", help="for the TLS handshake, and for a request's "
                                             "line and headers (default 10)")
    run.add_argument("--shard", metavar="INDEX/COUNT",
                     help="probe, export and alert on only the endpoints this shard owns "
                          "(rendezvous hashing of the endpoint's name; INDEX from 0)")
    run.add_argument("--shard-count", type=int, metavar="COUNT",
                     help=f"as --shard, with INDEX from ${SHARD_INDEX_ENV} (a StatefulSet's "
                          "pod index)")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser(
        "check", parents=[common], help="probe once and report",
        description="Probe every endpoint once and print the result. Exit code: "
                    "0 ok, 1 warning, 2 critical/expired, 3 error.")
    check.add_argument("targets", nargs="*", metavar="HOST[:PORT]",
                       help="ad hoc targets (host, host:port, [v6]:port or a URL such as "
                            "smtp://mail.example.com); without them -c is read")
    check.add_argument("-c", "--config", type=Path, default=Path("config/certwatch.yaml"),
                       help="inventory file (default: %(default)s)")
    check.add_argument("--format", choices=["table", "json"], default="table")
    check.add_argument("--colour", "--color", choices=["auto", "always", "never"], default="auto",
                       help="auto: on a terminal, unless NO_COLOR is set")
    check.add_argument("--protocol", default="tls",
                       choices=sorted([*PROTOCOLS, *TLS_ALIASES]),
                       help="for ad hoc targets: tls or a STARTTLS protocol")
    check.add_argument("--server-name", help="SNI and name to verify ('' sends no SNI)")
    check.add_argument("--ca-file", help="extra trusted roots (PEM)")
    check.add_argument("--warn-days", type=float)
    check.add_argument("--critical-days", type=float)
    check.add_argument("--warn-fraction", help="warn below this share of the lifetime left "
                                                "(default 1/3; 1: the fixed days only)")
    check.add_argument("--critical-fraction", help="page below this share (default 1/5)")
    check.add_argument("--acme-directory", metavar="URL",
                       help="the CA's ACME directory: ask it for the renewal window (RFC 9773)")
    check.add_argument("--timeout", type=float, help="seconds per phase (default 10)")
    check.add_argument("--addresses", choices=["all", "first", "ipv4", "ipv6"])
    check.add_argument("--proxy-url", metavar="http://HOST:PORT",
                       help="for ad hoc targets: reach them through this HTTP CONNECT proxy")
    check.add_argument("--proxy-username", help="Basic credentials for --proxy-url ...")
    check.add_argument("--proxy-password-env", metavar="VARIABLE",
                       help="... with the password from this environment variable")
    check.add_argument("--insecure", action="store_true",
                       help="do not let verification problems raise the state")
    check.add_argument("--strict", action="store_true", help=STRICT_HELP)
    check.add_argument("--no-revocation", action="store_true",
                       help="for ad hoc targets: no stapled OCSP, CRL or OCSP checks")
    check.add_argument("--ocsp", action="store_true",
                       help="for ad hoc targets: also ask the certificate's OCSP responder")
    check.set_defaults(func=cmd_check)

    validate = commands.add_parser("validate", parents=[common],
                                   help="check an inventory file (and a web configuration) "
                                        "and exit")
    validate.add_argument("-c", "--config", type=Path, default=Path("config/certwatch.yaml"))
    validate.add_argument("--web.config.file", "--web-config", dest="web_config", type=Path,
                          metavar="FILE", help="also check this web configuration (as `run` "
                          "takes it)")
    validate.add_argument("--strict", action="store_true", help=STRICT_HELP)
    validate.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or ("info" if args.command == "run" else "warning")
    configure_logging(level, args.log_format if args.command == "run" else "text")
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # `certwatch check --format json | head`: the reader left, which is no error of
        # ours. Python's advice: point stdout at devnull so the exit's flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_UNKNOWN


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
