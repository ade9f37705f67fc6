"""The stylesheet of certwatch's HTML pages, and the Content-Security-Policy that allows it.

One stylesheet for the status page and the target pages, inline (no external assets).
The policy allows exactly this stylesheet, by its hash, and nothing else: no script,
no image, no font, no frame, no connection; forms submit to the page's own origin only
(the filter form is a plain GET). The pages need no JavaScript at all.

Colours: a light and a dark palette (``prefers-color-scheme``). Text colours meet WCAG
AA (4.5:1) on the backgrounds they are used on, in both palettes; the state badges are
white on a dark enough colour in both. tests/test_browser.py measures this in Chromium.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["CONTENT_SECURITY_POLICY", "CSS"]

CSS = """
:root{color-scheme:light dark;
--ok:#1a7f37;--warning:#9a4d08;--critical:#c62828;--expired:#7f1d1d;--error:#6d28d9;
--unknown:#5c6470;
--ok-fg:#1a7f37;--warning-fg:#9a4d08;--critical-fg:#b91c1c;--expired-fg:#7f1d1d;
--error-fg:#6d28d9;--unknown-fg:#59636e;
--ink:#1f2328;--muted:#59636e;--line:#d0d7de;--bg:#f6f8fa;--panel:#fff;--head:#f3f5f7;
--tag:#eef1f4;--link:#0a58ca;--focus:#0a58ca;
--row-warning:#fff8e6;--row-critical:#fdf0f0;--row-expired:#fbe7e7;--row-error:#f5f2fe;
--banner:#fff8c5;--banner-line:#d4a72c;--info:#ddf4ff;--info-line:#54aeff}
@media (prefers-color-scheme:dark){:root{
--ok-fg:#4ac26b;--warning-fg:#e3a03c;--critical-fg:#ff7b72;--expired-fg:#f778ba;
--error-fg:#b49cff;--unknown-fg:#9da7b3;
--ink:#e6edf3;--muted:#9da7b3;--line:#3d444d;--bg:#0d1117;--panel:#151b23;--head:#1b222c;
--tag:#212830;--link:#6cb6ff;--focus:#6cb6ff;
--row-warning:#272115;--row-critical:#2c1719;--row-expired:#331518;--row-error:#211b33;
--banner:#2e2a12;--banner-line:#9e7b14;--info:#0f2a3f;--info-line:#1f6feb}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--ink);background:var(--bg)}
a{color:var(--link)}
a:focus-visible,button:focus-visible,input:focus-visible,select:focus-visible,
summary:focus-visible{outline:3px solid var(--focus);outline-offset:2px;border-radius:3px}
.skip{position:absolute;left:8px;top:-40px;background:var(--panel);padding:6px 10px;
border:1px solid var(--line);z-index:1}
.skip:focus{top:8px}
header,main,footer{max-width:1280px;margin:0 auto;padding:16px 20px}
header{padding-bottom:4px}
footer{color:var(--muted);font-size:12px;padding-top:0}
h1{font-size:20px;margin:0 8px 0 0;display:inline}
h2{font-size:15px;margin:0 0 8px}
.meta,.sub{color:var(--muted);font-size:12px}
.counts{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0;margin:12px 0 4px}
.badge{display:inline-block;border-radius:999px;padding:2px 10px;font-weight:600;
font-size:12px;color:#fff;white-space:nowrap;text-decoration:none;border:2px solid transparent}
.counts .badge{font-size:13px;padding:4px 12px}
.counts a.badge:hover{text-decoration:underline}
.counts .badge[aria-current]{border-color:var(--ink);box-shadow:0 0 0 2px var(--panel) inset}
.counts .zero{background:var(--panel);color:var(--muted);border-color:var(--line)}
.total{background:var(--panel);color:var(--ink);border-color:var(--line)}
.s-ok{--c:var(--ok);--fg:var(--ok-fg)}.s-warning{--c:var(--warning);--fg:var(--warning-fg)}
.s-critical{--c:var(--critical);--fg:var(--critical-fg)}
.s-expired{--c:var(--expired);--fg:var(--expired-fg)}
.s-error{--c:var(--error);--fg:var(--error-fg)}.s-unknown{--c:var(--unknown);--fg:var(--unknown-fg)}
.badge.s-ok,.badge.s-warning,.badge.s-critical,.badge.s-expired,.badge.s-error,
.badge.s-unknown{background:var(--c)}
.counts .badge.zero{background:var(--panel)}
.banner{margin:0 0 12px;padding:10px 14px;border-radius:6px;
border:1px solid var(--banner-line);background:var(--banner)}
.banner.starting{border-color:var(--info-line);background:var(--info)}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:8px;
margin:0 0 14px;padding:12px 14px}
.filters{display:flex;flex-wrap:wrap;gap:10px 14px;align-items:flex-end}
.filters label{display:flex;flex-direction:column;font-size:12px;color:var(--muted);gap:2px}
.filters input,.filters select,.filters button{font:inherit;color:var(--ink);
background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:5px 8px;min-height:32px}
.filters input[type=search]{width:18em;max-width:100%}
.filters button{background:var(--link);color:var(--panel);border-color:var(--link);
font-weight:600;cursor:pointer}
.timeline svg{display:block;width:100%;height:auto}.timeline .tl-narrow{display:none}
.timeline .axis{stroke:var(--line)}.timeline .tick{fill:var(--muted);font-size:11px}
.timeline .today{stroke:var(--ink)}
.timeline rect{fill:var(--fg)}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:6px 0 0;padding:0;list-style:none}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;
background:var(--fg)}
.range p{margin:0}
.range{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:center;gap:8px;margin:0 0 8px;
color:var(--muted)}
.pages{display:flex;flex-wrap:wrap;gap:6px;list-style:none;margin:0;padding:0}
.pages a,.pages span{display:inline-block;padding:3px 9px;border:1px solid var(--line);
border-radius:6px;background:var(--panel);text-decoration:none}
.pages span[aria-current]{font-weight:700;color:var(--ink)}
.pages span.gap{border-color:transparent;background:none}
.wrap{background:var(--panel);border:1px solid var(--line);border-radius:8px;overflow:hidden}
table{width:100%;border-collapse:collapse;table-layout:fixed}
th{text-align:left;font-size:12px;color:var(--muted);font-weight:600;background:var(--head);
border-bottom:1px solid var(--line);white-space:nowrap}
th a{color:inherit;text-decoration:none}th a:hover{text-decoration:underline}
th[aria-sort] a{color:var(--ink)}
th,td{padding:9px 10px;vertical-align:top}
td{border-top:1px solid var(--line);overflow-wrap:anywhere}
th:nth-child(1){width:100px}th:nth-child(2){width:84px}th:nth-child(3){width:176px}
th:nth-child(4){width:21%}th:nth-child(5){width:12%}th:nth-child(6){width:11%}
th:nth-child(7){width:124px}
tr.s-warning td{background:var(--row-warning)}tr.s-critical td{background:var(--row-critical)}
tr.s-expired td{background:var(--row-expired)}tr.s-error td{background:var(--row-error)}
td.state,th:first-child{border-left:4px solid var(--c,transparent)}
td.days{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums;font-weight:600;
color:var(--fg)}
th:nth-child(2){text-align:right}th:nth-child(3){padding-left:20px}
td.expires{padding-left:20px;white-space:nowrap}td.expires .sub{white-space:normal}
td.expires,td.checked{font-variant-numeric:tabular-nums}
.name{font-weight:600}
.tag{display:inline-block;margin:3px 4px 0 0;padding:0 6px;border-radius:4px;
background:var(--tag);border:1px solid var(--line);font-size:11px;color:var(--muted)}
.good{color:var(--ok-fg)}.bad{color:var(--critical-fg)}.failed{color:var(--error-fg)}
.empty{padding:48px 20px;text-align:center;color:var(--muted);background:var(--panel);
border:1px solid var(--line);border-radius:6px}
.facts{display:grid;grid-template-columns:minmax(120px,max-content) 1fr;gap:4px 16px;margin:0}
.facts dt{color:var(--muted)}.facts dd{margin:0;overflow-wrap:anywhere}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.cert{border-top:1px solid var(--line);padding:12px 0 4px}.cert:first-of-type{border-top:0}
.cert h3{font-size:14px;margin:0 0 6px}
.life svg{display:block;width:100%;max-width:720px;height:auto;margin:4px 0}
.life .track{fill:var(--tag);stroke:var(--line)}.life .used{fill:var(--c)}
.life .mark{stroke:var(--ink);stroke-width:3}
.life .zone-warning{fill:var(--warning);opacity:.35}.life .zone-critical{fill:var(--critical);opacity:.5}
.life .ends{display:flex;justify-content:space-between;max-width:720px}
.list{margin:0;padding-left:18px}
@media (max-width:700px){
header,main,footer{padding:12px}
thead{display:none}
table,tbody,tr,td{display:block;width:100%}
.wrap{border:0;background:none}
tr{display:flex;flex-direction:column;margin:0 0 12px;background:var(--panel);
border:1px solid var(--line);border-left:5px solid var(--c);border-radius:6px;overflow:hidden}
td,td.state{border:0;padding:3px 12px;display:flex;gap:10px}
td::before{content:attr(data-label);flex:0 0 84px;color:var(--muted);font-size:12px;
font-weight:400;padding-top:2px}
td>div{flex:1;min-width:0}
td.blank{display:none}
td.endpoint{order:-1;padding-top:10px;display:block}
td.endpoint::before{content:none}
td.days,th:nth-child(2){text-align:left}
td.expires{padding-left:12px}
td:last-child{padding-bottom:10px}
.filters{display:grid;grid-template-columns:1fr 1fr}.filters .search{grid-column:1/-1}
.filters input,.filters select,.filters input[type=search]{width:100%}
.timeline .tl-wide{display:none}.timeline .tl-narrow{display:block}
.facts{grid-template-columns:1fr}.facts dd{margin-bottom:6px}
}
"""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'self'"
)
