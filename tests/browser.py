"""Headless Chromium, driven over the DevTools protocol, for the status page's tests.

Debian's chromium (installed by .ci/run) runs once per test module (`Chromium`), with
remote debugging on a loopback port the kernel picks; each test opens its own tab
(`Chromium.tab`) inside its own asyncio.run and speaks CDP to it over a websocket
(aiohttp's client: certwatch already depends on aiohttp). The tab does what a person does:
navigates, clicks at an element's place on the screen, presses keys, types, and is
looked at through the DOM and through screenshots (decoded here: `Screenshot`).

Every wait is bounded (TIMEOUT), and the browser process is killed at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import struct
import subprocess
import threading
import urllib.request
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT = 30.0  # seconds for any one step: start-up, a command, a page load


class Chromium:
    """The browser process; `tab()` opens a fresh tab to drive."""

    def __init__(self, profile: Path) -> None:
        self.process = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        found: list[str] = []
        ready = threading.Event()

        def read_stderr() -> None:  # and keep draining it, or a full pipe stalls Chromium
            assert self.process.stderr is not None
            for line in self.process.stderr:
                match = re.search(r"DevTools listening on (ws://\S+)", line)
                if match and not found:
                    found.append(match.group(1))
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read_stderr, daemon=True)
        self._reader.start()
        if not ready.wait(TIMEOUT) or not found:
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")
        self.http = "http://" + found[0].split("/")[2]

    def close(self) -> None:
        self.process.kill()
        self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()

    @contextlib.asynccontextmanager
    async def tab(self) -> AsyncIterator[Tab]:
        with urllib.request.urlopen(urllib.request.Request(
                f"{self.http}/json/new?about:blank", method="PUT"), timeout=TIMEOUT) as r:
            info = json.load(r)
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    info["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Tab(ws)
                reader = asyncio.create_task(tab.read())
                try:
                    for domain in ("Page", "Runtime", "Log"):
                        await tab.call(f"{domain}.enable")
                    yield tab
                finally:
                    reader.cancel()
        finally:
            with urllib.request.urlopen(f"{self.http}/json/close/{info['id']}", timeout=TIMEOUT):
                pass


class Tab:
    """One tab: CDP commands, the events that matter, and what a person would do."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loads: list[asyncio.Future[None]] = []
        self.log: list[dict[str, Any]] = []  # console messages, CSP reports, exceptions

    async def read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._replies.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Page.loadEventFired":
                for waiter in self._loads:
                    if not waiter.done():
                        waiter.set_result(None)
                self._loads.clear()
            elif data.get("method") in ("Log.entryAdded", "Runtime.exceptionThrown",
                                        "Runtime.consoleAPICalled"):
                self.log.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[number] = future
        await self.ws.send_json({"id": number, "method": method, "params": params})
        reply = await asyncio.wait_for(future, TIMEOUT)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    @contextlib.asynccontextmanager
    async def navigation(self) -> AsyncIterator[None]:
        """Waits, after the block, for the page the block started loading."""
        loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loads.append(loaded)
        yield
        await asyncio.wait_for(loaded, TIMEOUT)

    async def goto(self, url: str) -> None:
        async with self.navigation():
            await self.call("Page.navigate", url=url)

    async def js(self, expression: str) -> Any:
        """The value of `expression` in the page (run by DevTools, not by the page: the
        page's own policy allows no script at all)."""
        result = await self.call("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def url(self) -> str:
        return str(await self.js("location.pathname + location.search"))

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=mobile)

    async def colour_scheme(self, scheme: str) -> None:
        await self.call("Emulation.setEmulatedMedia",
                        features=[{"name": "prefers-color-scheme", "value": scheme}])

    async def click(self, selector: str) -> None:
        """A left click at the middle of the first element `selector` finds."""
        box = await self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                            button="left", clickCount=1)

    async def press(self, key: str, *, shift: bool = False) -> None:
        codes = {"Tab": 9, "Enter": 13, "ArrowDown": 40, "ArrowUp": 38, " ": 32}
        extra = {"text": "\r"} if key == "Enter" else {"text": " "} if key == " " else {}
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key,
                            code="Space" if key == " " else key,
                            windowsVirtualKeyCode=codes[key], modifiers=8 if shift else 0,
                            **(extra if kind == "keyDown" else {}))

    async def type(self, text: str) -> None:
        await self.call("Input.insertText", text=text)

    async def screenshot(self) -> bytes:
        """The viewport as a PNG."""
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])

    async def look(self, scale: float = 0.5) -> Screenshot:
        """The viewport scaled down and decoded, to look at its pixels (a solid area keeps
        its exact colour; decoding a full-size PNG in Python takes seconds)."""
        width, height = await self.js("[innerWidth, innerHeight]")
        data = await self.call("Page.captureScreenshot", format="png", clip={
            "x": 0, "y": 0, "width": width, "height": height, "scale": scale})
        return Screenshot.decode(base64.b64decode(data["data"]))

    def policy_violations(self) -> list[str]:
        texts = [json.dumps(entry) for entry in self.log]
        return [t for t in texts if "Content Security Policy" in t or "Content-Security" in t]


@dataclass(frozen=True)
class Screenshot:
    """A PNG from Chromium, decoded (8-bit RGB or RGBA, not interlaced)."""

    png: bytes
    width: int
    height: int
    channels: int
    rows: list[bytes]
    _counts: Counter[tuple[int, int, int]] | None = None

    @classmethod
    def decode(cls, png: bytes) -> Screenshot:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        chunks, position = {}, 8
        idat = b""
        while position < len(png):
            size, kind = struct.unpack(">I4s", png[position:position + 8])
            body = png[position + 8:position + 8 + size]
            if kind == b"IDAT":
                idat += body
            else:
                chunks[kind] = body
            position += size + 12
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
        assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
        channels = 3 if colour == 2 else 4
        raw = zlib.decompress(idat)
        stride = width * channels
        rows: list[bytes] = []
        previous = bytearray(stride)
        for y in range(height):
            kind = raw[y * (stride + 1)]
            line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                up = previous[i]
                corner = previous[i - channels] if i >= channels else 0
                if kind == 1:
                    line[i] = (line[i] + left) & 0xFF
                elif kind == 2:
                    line[i] = (line[i] + up) & 0xFF
                elif kind == 3:
                    line[i] = (line[i] + (left + up) // 2) & 0xFF
                elif kind == 4:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    line[i] = (line[i] + (left if pa <= pb and pa <= pc else
                                          up if pb <= pc else corner)) & 0xFF
            rows.append(bytes(line))
            previous = line
        return cls(png, width, height, channels, rows)

    @staticmethod
    def size(png: bytes) -> tuple[int, int]:
        """Width and height of a PNG, from its header."""
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        return width, height

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        start = x * self.channels
        r, g, b = self.rows[y][start:start + 3]
        return r, g, b

    def pixels(self) -> Iterator[tuple[int, int, int]]:
        for row in self.rows:
            for x in range(0, len(row), self.channels):
                yield row[x], row[x + 1], row[x + 2]

    def count(self, colour: tuple[int, int, int], tolerance: int = 6) -> int:
        """Pixels of `colour`, give or take `tolerance` in each channel."""
        if self._counts is None:
            object.__setattr__(self, "_counts", Counter(self.pixels()))
        assert self._counts is not None
        return sum(n for p, n in self._counts.items()
                   if all(abs(a - b) <= tolerance for a, b in zip(p, colour)))


def hex_colour(value: str) -> tuple[int, int, int]:
    value = value.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


# Run in the page by the tests (DevTools, not the page): every element that shows text,
# its colour against the background it is drawn on, and WCAG's contrast ratio.
CONTRAST_CHECK = r"""(() => {
  const parse = c => { const m = c.match(/[\d.]+/g).map(Number);
                       return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1}; };
  const lum = c => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92
                                       : Math.pow((v + 0.055) / 1.055, 2.4); };
                     return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const background = el => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.a > 0.5) return c;
    }
    return parse(getComputedStyle(document.documentElement).backgroundColor || 'rgb(255,255,255)');
  };
  const opacity = el => { let o = 1; for (let e = el; e; e = e.parentElement)
                            o *= parseFloat(getComputedStyle(e).opacity); return o; };
  const blend = (fg, bg, o) => ({r: fg.r * o + bg.r * (1 - o), g: fg.g * o + bg.g * (1 - o),
                                  b: fg.b * o + bg.b * (1 - o)});
  const seen = []; const failures = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el) continue;
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    if (style.visibility === 'hidden' || box.width === 0 || box.height === 0) continue;
    if (el.closest('svg')) continue;  // drawn text: checked below
    const bg = background(el), fg = blend(parse(style.color), bg, opacity(el) * parse(style.color).a);
    const l1 = lum(fg), l2 = lum(bg);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    const needed = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    seen.push(ratio);
    if (ratio < needed) failures.push([node.textContent.trim().slice(0, 40), style.color,
                                       getComputedStyle(el).backgroundColor,
                                       Math.round(ratio * 100) / 100]);
  }
  for (const t of document.querySelectorAll('svg text')) {
    const box = t.getBoundingClientRect();
    if (box.width === 0) continue;
    const bg = background(t.closest('figure')), fg = blend(parse(getComputedStyle(t).fill), bg, opacity(t));
    const l1 = lum(fg), l2 = lum(bg);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    seen.push(ratio);
    if (ratio < 4.5) failures.push([t.textContent, getComputedStyle(t).fill, 'svg', ratio]);
  }
  return {checked: seen.length, failures: failures};
})()"""
