"""The HTTP layer's own small rules (the daemon's endpoints are tested in test_daemon)."""

from __future__ import annotations

import gzip
import importlib.util
import sys

import pytest

from certwatch.serving.web import accepts_gzip, gzip_compressor


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


@pytest.mark.parametrize("isal", [True, False], ids=["isal", "zlib"])
def test_gzip_with_isal_and_without(isal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """ISA-L's deflate is an optional accelerator: without it, zlib's makes the same
    stream (as gzip reads it)."""
    if not isal:
        monkeypatch.setitem(sys.modules, "isal", None)  # import isal now raises ImportError
    elif importlib.util.find_spec("isal") is None:
        pytest.skip("isal is not installed")
    text = "".join(f'certwatch_probe_success{{name="t{i}",address="127.0.0.{i % 250}"}} 1.0\n'
                   for i in range(20000)).encode()
    compressor = gzip_compressor()
    assert type(compressor).__module__.startswith("isal" if isal else "zlib")
    chunks = [compressor.compress(text[start:start + 65536]) for start in range(0, len(text), 65536)]
    body = b"".join(chunks) + compressor.flush()
    assert gzip.decompress(body) == text
    assert len(body) < len(text) / 10
