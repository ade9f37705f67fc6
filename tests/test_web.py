"""The HTTP layer's own small rules (the daemon's endpoints are tested in test_daemon)."""

from __future__ import annotations

import pytest

from certwatch.serving.web import accepts_gzip


@pytest.mark.parametrize(("header", "gzip"), [
    ("gzip", True),  # what Prometheus sends
    ("gzip, deflate, br", True),
    ("GZIP;q=0.5", True),
    ("x-gzip", True),
    ("*", True),
    ("", False),
    ("identity", False),
    ("deflate, br", False),
    ("gzip;q=0", False),
    ("gzip;q=0.0, deflate", False),
    ("*, gzip;q=0", False),  # named and refused, whatever "*" says
    ("*;q=0", False),
    ("gzip;q=nonsense", False),
])
def test_accepts_gzip(header: str, gzip: bool) -> None:
    assert accepts_gzip(header) is gzip
