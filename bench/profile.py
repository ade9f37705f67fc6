"""Summarises a py-spy profile (collapsed stacks, `py-spy record --format raw`): where
the samples went, function by function.

    python bench/profile.py profile.txt [--top 40] [--filter certwatch]

Prints, for the functions with the most samples, the share of all samples in which
each is on the stack (inclusive) and at its top (self). Idle samples (the event loop
waiting in epoll/select) are counted apart, so the shares are of the CPU that was used.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

IDLE = re.compile(r"\b(select|poll|epoll_wait|_run_once)\b.*\(selectors\.py|uvloop")
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str) -> str:
    """`function (path/to/module.py:123)` as `module.function`."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("/certwatch/", "site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/certwatch/":
                path = "certwatch/" + path
            break
    module = path.removesuffix(".py").replace("/", ".")
    return f"{module}.{match['function']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--filter", default="", help="only functions whose name contains this")
    args = parser.parse_args()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f.strip()]
        if frames and ("selectors.select" in frames[-1] or frames[-1].endswith(".select")
                       or "epoll" in frames[-1]):
            idle += count
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count
    print(f"{total} busy samples ({idle} idle, not counted)")
    print(f"{'inclusive':>9} {'self':>6}  function")
    shown = 0
    for name, count in inclusive.most_common():
        if args.filter not in name:
            continue
        print(f"{100 * count / total:8.1f}% {100 * own[name] / total:5.1f}%  {name}")
        shown += 1
        if shown >= args.top:
            break
    print("\nmost self time:")
    for name, count in own.most_common(args.top // 2):
        print(f"{100 * count / total:8.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
