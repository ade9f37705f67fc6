"""The status page and a target's page in a real browser: Debian's headless Chromium,
driven like a person (clicks, keys, typing) over the DevTools protocol (tests/browser.py),
looking at what is shown through the DOM and through screenshots.

Most tests use the real daemon on the demo inventory (`make run`'s: a real TLS endpoint
in every state); the hostile-strings test serves the daemon's own web app over
certificates made here. With CERTWATCH_SCREENSHOTS=<directory> the screenshots are kept
(docs/status-page.png and docs/target-page.png are made so).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry

from certwatch.core.assess import assess
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.core.status import TargetStatus
from certwatch.core.verify import TrustStore
from certwatch.daemon.store import Store
from certwatch.serving.web import create_app
from tests.browser import CHROMIUM, CONTRAST_CHECK, Chromium, Screenshot, Tab, hex_colour
from tests.pki import make_intermediate, make_leaf, make_root
from tests.test_daemon import RunningDaemon, free_port, wait_for
from tests.test_statuspage import HOSTILE

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM}: "
                                "apt-get install chromium (.ci/run does)")

SHOWN_HOSTILE = HOSTILE.replace("\n", "\\n").replace("\x1b", "\\x1b")
LIGHT_BACKGROUND, DARK_BACKGROUND = hex_colour("#f6f8fa"), hex_colour("#0d1117")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """`certwatch run` on the demo inventory, as `make run` starts it."""
    directory = tmp_path_factory.mktemp("demo")
    config = directory / "certwatch.yaml"
    config.write_text("demo: true\ndefaults: {interval: 15s, retry_interval: 10s, timeout: 5}\n"
                      "endpoints: []\n")
    daemon = RunningDaemon(config, directory / "daemon.log", port=free_port())
    try:
        wait_for("the demo's first sweep", lambda: daemon.get("/readyz")[0] == 200, timeout=30)
        yield daemon
    finally:
        daemon.stop()


def run(chromium: Chromium, scenario: Callable[[Tab], Awaitable[None]]) -> None:
    async def main() -> None:
        async with chromium.tab() as tab:
            await scenario(tab)
    asyncio.run(main())


def keep(name: str, png: bytes) -> None:
    directory = os.environ.get("CERTWATCH_SCREENSHOTS")
    if directory:
        Path(directory, name).write_bytes(png)


async def rows(tab: Tab) -> list[list[str]]:
    """(name, state) of each table row, as shown."""
    return list(await tab.js(
        "[...document.querySelectorAll('tbody tr')].map(r => "
        "[r.querySelector('.name').textContent, r.querySelector('.badge').textContent])"))


def test_the_page_shows_every_state_problems_first(chromium: Chromium, demo: RunningDaemon) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.viewport(1280, 1000)
        await tab.goto(f"http://127.0.0.1:{demo.port}/")
        shown = await rows(tab)
        assert len(shown) == 7
        order = ["expired", "critical", "error", "warning", "ok"]
        states = [state for _, state in shown]
        assert states == sorted(states, key=order.index)  # problems first
        assert shown[0] == ["demo-expired", "expired"]
        counts = await tab.js("[...document.querySelectorAll('.counts a')].map(a => a.textContent)")
        assert counts[0] == "7 total" and "1 expired" in counts and "1 error" in counts
        # The picture: the wide drawing shown, the narrow one not; bars for what is coming.
        assert await tab.js("getComputedStyle(document.querySelector('.tl-wide')).display") == "block"
        assert await tab.js("getComputedStyle(document.querySelector('.tl-narrow')).display") == "none"
        assert await tab.js("document.querySelectorAll('.tl-wide rect').length") >= 5
        checked = await tab.js("document.querySelector('td.checked .sub').textContent")
        assert checked.startswith("next in ") and checked.endswith(" s"), checked
        assert await tab.js("document.querySelector('td.issuer').textContent") == \
            "certwatch demo intermediate"
        assert tab.policy_violations() == [] and not [e for e in tab.log
                                                      if e["method"] == "Runtime.exceptionThrown"]
        png = await tab.screenshot()
        assert Screenshot.size(png) == (1280, 1000)
        keep("status-page.png", png)
        shot = await tab.look()
        assert shot.pixel(1, 1) == LIGHT_BACKGROUND
        for colour in ("#7f1d1d", "#c62828", "#6d28d9", "#9a4d08", "#1a7f37"):  # every state
            assert shot.count(hex_colour(colour)) > 50, colour
    run(chromium, scenario)


def test_the_counts_filter_and_the_url_keeps_the_filter(chromium: Chromium,
                                                         demo: RunningDaemon) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.goto(f"http://127.0.0.1:{demo.port}/")
        async with tab.navigation():
            await tab.click(".counts a.s-error")
        assert await tab.url() == "/?state=error"
        assert await rows(tab) == [["demo-unreachable", "error"]]
        assert await tab.js("document.querySelector('.counts a.s-error')"
                            ".getAttribute('aria-current')") == "true"
        async with tab.navigation():  # the active count clears its filter
            await tab.click(".counts a.s-error")
        assert await tab.url() == "/" and len(await rows(tab)) == 7
        await tab.goto(f"http://127.0.0.1:{demo.port}/?team=web&state=ok")  # a shared link
        assert await rows(tab) == [["demo-ok", "ok"]]
        assert await tab.js("document.querySelector('select[name=team]').value") == "web"
    run(chromium, scenario)


def test_search_and_a_label_filter_by_keyboard(chromium: Chromium, demo: RunningDaemon) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.goto(f"http://127.0.0.1:{demo.port}/")
        await tab.click("input[name=q]")
        await tab.type("wrong-name.demo")  # its server name
        async with tab.navigation():
            await tab.press("Enter")
        assert await tab.url() == "/?q=wrong-name.demo"  # the form's empty fields dropped
        assert [name for name, _ in await rows(tab)] == ["demo-wrong-name"]
        await tab.goto(f"http://127.0.0.1:{demo.port}/")
        await tab.js("document.querySelector('select[name=team]').focus()")
        await tab.press("ArrowDown")  # the first team: "intranet"
        for _ in range(4):  # source, order, direction, Apply
            await tab.press("Tab")
        assert await tab.js("document.activeElement.textContent") == "Apply"
        async with tab.navigation():
            await tab.press("Enter")
        assert await tab.url() == "/?team=intranet"
        assert await rows(tab) == [["demo-untrusted", "critical"]]
    run(chromium, scenario)


def test_columns_sort_by_their_headings(chromium: Chromium, demo: RunningDaemon) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.goto(f"http://127.0.0.1:{demo.port}/")
        async with tab.navigation():
            await tab.click("th:nth-child(4) a")  # Endpoint
        names = [name for name, _ in await rows(tab)]
        assert names == sorted(names) and await tab.url() == "/?sort=name"
        assert await tab.js("document.querySelector('th:nth-child(4)')"
                            ".getAttribute('aria-sort')") == "ascending"
        async with tab.navigation():
            await tab.click("th:nth-child(4) a")
        assert [name for name, _ in await rows(tab)] == sorted(names, reverse=True)
        async with tab.navigation():
            await tab.click("th:nth-child(2) a")  # Days left: soonest first, errors last
        shown = await rows(tab)
        assert shown[0][0] == "demo-expired" and shown[-1][0] == "demo-unreachable"
    run(chromium, scenario)


def test_a_target_page_from_its_row_and_back(chromium: Chromium, demo: RunningDaemon) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.viewport(1280, 1600)
        await tab.goto(f"http://127.0.0.1:{demo.port}/?state=critical")
        async with tab.navigation():
            await tab.click("a[href*='demo-wrong-name']")
        assert await tab.url() == "/target?key=demo-wrong-name%40127.0.0.1&state=critical"
        assert await tab.js("document.querySelector('h1').textContent") == "demo-wrong-name"
        sections = await tab.js("[...document.querySelectorAll('section')].map(s => s.id)")
        assert sections == ["summary", "verification", "chain", "renewal", "revocation", "probe",
                            "endpoint"]
        verdict = await tab.js("document.querySelector('#verification p').textContent")
        assert verdict == "Clients will refuse this certificate: name mismatch."
        certs = await tab.js("[...document.querySelectorAll('#chain article h3')]"
                             ".map(h => h.textContent)")
        assert certs == ["0 · leaf: elsewhere.demo.certwatch.invalid",
                         "1 · intermediate: certwatch demo intermediate"]
        bar = await tab.js("document.querySelector('.life svg').getAttribute('aria-label')")
        assert bar.startswith("Lifetime: ") and "days left" in bar
        probe = await tab.js("document.querySelector('#probe').textContent")
        assert "Next probe" in probe and "(in " in probe
        keep("target-page.png", await tab.screenshot())
        assert (await tab.look()).count(hex_colour("#c62828")) > 30  # the critical badge
        async with tab.navigation():
            await tab.click("header a")  # ← all targets
        assert await tab.url() == "/?state=critical"
    run(chromium, scenario)


def test_keyboard_skip_link_and_visible_focus(chromium: Chromium, demo: RunningDaemon) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.goto(f"http://127.0.0.1:{demo.port}/")
        await tab.press("Tab")
        focused = await tab.js("[document.activeElement.textContent, "
                               "document.activeElement.getBoundingClientRect().top]")
        assert focused[0] == "Skip to the targets" and focused[1] >= 0  # shown when focused
        async with tab.navigation():  # hash navigation fires no load: go by the link itself
            await tab.js("location.href = document.activeElement.href; location.reload()")
        assert await tab.js("location.hash") == "#targets"
        await tab.goto(f"http://127.0.0.1:{demo.port}/")
        await tab.press("Tab")
        await tab.press("Tab")
        outline = await tab.js("(() => { const s = getComputedStyle(document.activeElement);"
                               " return [document.activeElement.textContent, s.outlineStyle,"
                               " s.outlineWidth]; })()")
        assert outline == ["7 total", "solid", "3px"]
        for _ in range(3):
            await tab.press("Tab")  # 1 expired, 1 critical.., to the counts of errors
        label = await tab.js("document.activeElement.textContent")
        async with tab.navigation():
            await tab.press("Enter")
        state = label.split()[1]
        assert await tab.url() == f"/?state={state}"
    run(chromium, scenario)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_dark_mode_and_contrast(chromium: Chromium, demo: RunningDaemon, scheme: str) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.viewport(1280, 1000)
        await tab.colour_scheme(scheme)
        key = quote("demo-untrusted@127.0.0.1", safe="")
        for path in ("/", "/?state=ok", f"/target?key={key}"):
            await tab.goto(f"http://127.0.0.1:{demo.port}{path}")
            result = await tab.js(CONTRAST_CHECK)
            assert result["checked"] > 40, path
            assert result["failures"] == [], (path, result["failures"])
        shot = await tab.look()
        assert shot.pixel(1, 1) == (DARK_BACKGROUND if scheme == "dark" else LIGHT_BACKGROUND)
        if scheme == "dark":
            await tab.goto(f"http://127.0.0.1:{demo.port}/")
            keep("status-page-dark.png", await tab.screenshot())
    run(chromium, scenario)


def test_phone_layout(chromium: Chromium, demo: RunningDaemon) -> None:
    async def scenario(tab: Tab) -> None:
        await tab.viewport(390, 844, mobile=True)
        for path in ("/", "/target?key=" + quote("demo-ok@127.0.0.1", safe="")):
            await tab.goto(f"http://127.0.0.1:{demo.port}{path}")
            width = await tab.js("[document.documentElement.scrollWidth, innerWidth]")
            assert width[0] <= width[1], (path, width)  # nothing wider than the phone
        await tab.goto(f"http://127.0.0.1:{demo.port}/")
        assert await tab.js("getComputedStyle(document.querySelector('thead')).display") == "none"
        assert await tab.js("getComputedStyle(document.querySelector('tbody tr')).display") == "flex"
        assert await tab.js("getComputedStyle(document.querySelector('.tl-narrow')).display") == "block"
        assert await tab.js("getComputedStyle(document.querySelector('.tl-wide')).display") == "none"
        # Text on the narrow timeline is drawn at a readable size:
        size = await tab.js("document.querySelector('.tl-narrow text').getBoundingClientRect().height")
        assert size >= 10
        png = await tab.screenshot()
        assert Screenshot.size(png) == (390, 844)
        keep("status-page-phone.png", png)
    run(chromium, scenario)


def test_a_refresh_keeps_the_filter_and_the_scroll_position(chromium: Chromium,
                                                              demo: RunningDaemon) -> None:
    """The page refreshes itself with <meta http-equiv=refresh> (no script): the browser
    reloads the same URL, filter and all, and restores the scroll position of a reload.
    The demo's page is served here with a 2-second refresh instead of 60."""
    async def scenario(tab: Tab) -> None:
        async def shortened(request: web.Request) -> web.Response:
            _, page = demo.get(request.path_qs)
            assert 'http-equiv="refresh" content="60"' in page
            return web.Response(text=page.replace('content="60"', 'content="2"'),
                                content_type="text/html")

        app = web.Application()
        app.router.add_get("/", shortened)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            await tab.viewport(390, 600, mobile=True)
            await tab.goto(f"http://127.0.0.1:{runner.addresses[0][1]}/?team=web&team=mail")
            await tab.js("window.scrollTo(0, 700)")
            before = await tab.js("[scrollY, performance.getEntriesByType('navigation')[0].type]")
            assert before == [700, "navigate"]
            async with tab.navigation():  # the refresh, by itself
                pass
            after = await tab.js("[scrollY, location.search, "
                                 "performance.getEntriesByType('navigation')[0].type]")
            assert after == [700, "?team=web&team=mail", "reload"]
        finally:
            await runner.cleanup()
    run(chromium, scenario)


def test_the_policy_check_would_see_a_violation(chromium: Chromium, demo: RunningDaemon) -> None:
    """The other tests assert no CSP violation; this shows such a check can fail: the same
    page with its stylesheet changed by one character is refused its style."""
    async def scenario(tab: Tab) -> None:
        _, page = demo.get("/")
        doctored = page.replace("box-sizing:border-box", "box-sizing:content-box")
        await tab.goto("data:text/html;base64," + base64.b64encode(doctored.encode()).decode())
        assert tab.policy_violations()
        assert await tab.js("getComputedStyle(document.body).backgroundColor") == \
            "rgba(0, 0, 0, 0)"  # unstyled
    run(chromium, scenario)


def test_the_contrast_check_would_see_a_failure(chromium: Chromium) -> None:
    """The contrast test finds nothing to fault; this shows it can: grey on white, and
    text made faint with opacity (as the page's zero counts once were)."""
    async def scenario(tab: Tab) -> None:
        page = ('<body style="background:#fff"><p style="color:#999">faint</p>'
                '<p style="color:#000;opacity:.35">see-through</p>'
                '<p style="color:#222">fine</p></body>')
        await tab.goto("data:text/html;base64," + base64.b64encode(page.encode()).decode())
        result = await tab.js(CONTRAST_CHECK)
        assert [f[0] for f in result["failures"]] == ["faint", "see-through"]
    run(chromium, scenario)


# --- hostile strings, in the real browser ------------------------------------------------------


class HostileView:
    """The daemon's view (serving.web.DaemonView) over targets whose every certificate
    string, name, label, error and alert is hostile."""

    def __init__(self, store: Store, alerts: dict[str, list[dict[str, Any]]]) -> None:
        self.registry = CollectorRegistry()
        self.store = store
        self._alerts = alerts

    def snapshot(self) -> Mapping[str, TargetStatus]:
        return self.store.snapshot()

    def target_metrics(self) -> Iterator[str]:
        return iter(())

    def next_probe_at(self, endpoint_name: str) -> datetime | None:
        return datetime.now(timezone.utc) + timedelta(seconds=14)

    def ready(self) -> bool:
        return True

    def notices(self) -> list[str]:
        return [HOSTILE]

    def alerts_by_target(self) -> dict[str, list[dict[str, Any]]]:
        return self._alerts


def hostile_store() -> tuple[Store, dict[str, list[dict[str, Any]]]]:
    now = datetime.now(timezone.utc)
    root = make_root(HOSTILE[:60], not_before=now - timedelta(days=10),
                     not_after=now + timedelta(days=1000))
    ca = make_intermediate(root, HOSTILE[-60:], not_before=now - timedelta(days=10),
                           not_after=now + timedelta(days=900))
    leaf = make_leaf(ca, [HOSTILE, "ok.example.test"], not_before=now - timedelta(days=10),
                     not_after=now + timedelta(days=20), common_name=HOSTILE[25:])
    chain = tuple(c.public_bytes(Encoding.DER) for c in leaf.chain())
    store = Store()
    alerts: dict[str, list[dict[str, Any]]] = {}
    for name, address in ((HOSTILE, "192.0.2.1"), ("plain", "192.0.2.2")):
        endpoint = Endpoint(name=name, host="ok.example.test", port=443,
                            server_name="ok.example.test", labels=((HOSTILE, HOSTILE),))
        target = Target(endpoint, address)
        observation = Observation(target, now, 0.02, chain=chain, tls_version=HOSTILE,
                                  cipher=HOSTILE)
        error = ProbeError(HOSTILE, HOSTILE, HOSTILE)  # type: ignore[arg-type]
        status = TargetStatus(assess(observation, now, TrustStore.of([root.cert])), error, 2,
                              now, 0.02, ((now, error),))
        store.replace_endpoint(name, [status])
        alerts[target.key] = [{"key": HOSTILE, "kind": HOSTILE, "severity": HOSTILE,
                               "summary": HOSTILE, "started_at": HOSTILE,
                               "last_notification": {"action": HOSTILE, "sinks": {HOSTILE: {
                                   "status": HOSTILE, "attempts": 2, "error": HOSTILE,
                                   "delivered_at": HOSTILE}}}}]
    return store, alerts


INJECTED = """(() => ({
  elements: document.querySelectorAll('script, img, iframe, object, embed, b').length,
  handlers: [...document.querySelectorAll('*')].flatMap(e => [...e.attributes])
              .filter(a => a.name.startsWith('on')).length,
  text: document.body.textContent,
  title: document.title,
}))()"""


def test_hostile_strings_stay_text_in_the_browser(chromium: Chromium) -> None:
    store, alerts = hostile_store()

    async def scenario(tab: Tab) -> None:
        runner = web.AppRunner(create_app(HostileView(store, alerts)))  # type: ignore[arg-type]
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            key = quote(f"{HOSTILE}@192.0.2.1", safe="")
            for path in ("/", f"/?q={quote(HOSTILE)}&{quote(HOSTILE)}={quote(HOSTILE)}",
                         f"/target?key={key}&q={quote(HOSTILE)}", f"/target?key={quote(HOSTILE)}"):
                await tab.goto(base + path)
                seen = await tab.js(INJECTED)
                assert (seen["elements"], seen["handlers"]) == (0, 0), path
                assert SHOWN_HOSTILE in seen["text"], path
                assert "\x1b" not in seen["text"] and "\x1b" not in seen["title"]
                assert tab.policy_violations() == [], path
            dialogs = [e for e in tab.log if "alert" in json.dumps(e).lower()
                       and e.get("method") == "Runtime.consoleAPICalled"]
            assert dialogs == []
            await tab.goto(f"{base}/target?key={key}")
            counted = await tab.js("document.body.textContent.split("
                                   f"{json.dumps('<script>alert(1)</script>')}).length - 1")
            assert counted >= 10  # subject, issuer, SANs, name, labels, errors, alerts...
        finally:
            await runner.cleanup()
    run(chromium, scenario)


def test_docs_screenshots_are_fresh(tmp_path: Path) -> None:
    """docs/ holds the screenshots the README shows: made by this module, kept by
    CERTWATCH_SCREENSHOTS=docs (see the README's Development section)."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    for name in ("status-page.png", "target-page.png", "status-page-dark.png",
                 "status-page-phone.png"):
        data = (docs / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000, name
    readme = (docs.parent / "README.md").read_text()
    assert "docs/status-page.png" in readme and "docs/target-page.png" in readme
    shutil.rmtree(tmp_path)
