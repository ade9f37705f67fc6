"""What the daemon imports is what its configuration uses: the alerting package (with
httpx), the Kubernetes and file sources, the demo and the pages' renderers are each
imported when something asks for them, not at start-up (together ~5 MB of memory).

Each case is a fresh interpreter running the real daemon until its first sweep is done:
in this one, everything has long been imported by other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.servers import closed_port

OPTIONAL = ("httpx", "certwatch.alerting.notifier", "certwatch.alerting.sinks",
            "certwatch.sources.kubernetes", "certwatch.sources.kubeapi",
            "certwatch.sources.files", "certwatch.daemon.demo", "certwatch.render.statuspage",
            "certwatch.render.targetpage", "certwatch.serving.auth")

# Runs the daemon in this interpreter until its first sweep, optionally asks for a page,
# then prints which of OPTIONAL it imported (as JSON). Every wait is bounded.
RUN = """
import asyncio, json, sys, urllib.request
from pathlib import Path
from certwatch.daemon import Daemon

async def main():
    daemon = Daemon(Path(sys.argv[1]), listen="127.0.0.1:0", grace=1)
    task = asyncio.create_task(daemon.run())
    async with asyncio.timeout(30):
        while not daemon.ready() or daemon.bound_port is None:
            await asyncio.sleep(0.05)
    if sys.argv[2] == "page":
        url = f"http://127.0.0.1:{daemon.bound_port}/"
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    imported = [name for name in json.loads(sys.argv[3]) if name in sys.modules]
    daemon.stop()
    async with asyncio.timeout(30):
        await task
    print(json.dumps(imported))

asyncio.run(main())
"""


def imported(tmp_path: Path, inventory: str, ask: str = "") -> set[str]:
    config = tmp_path / "certwatch.yaml"
    config.write_text(inventory)
    done = subprocess.run([sys.executable, "-c", RUN, str(config), ask, json.dumps(OPTIONAL)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def endpoint(port: int) -> str:
    return f"endpoints:\n  - {{name: web, host: 127.0.0.1, port: {port}, timeout: 2}}\n"


def test_a_plain_inventory_imports_no_optional_part(tmp_path: Path) -> None:
    assert imported(tmp_path, endpoint(closed_port())) == set()


def test_each_part_is_imported_when_it_is_used(tmp_path: Path) -> None:
    port = closed_port()
    inventory = (f"state_dir: {tmp_path}\n"
                 "alerts:\n  sinks:\n"
                 f'    - {{name: hook, type: webhook, url: "http://127.0.0.1:{port}/hook"}}\n'
                 + endpoint(port)
                 + f"  - {{name: disk, files: [\"{tmp_path / 'missing.pem'}\"]}}\n")
    assert imported(tmp_path, inventory, ask="page") == {
        "httpx", "certwatch.alerting.notifier", "certwatch.alerting.sinks",
        "certwatch.sources.files", "certwatch.render.statuspage"}
