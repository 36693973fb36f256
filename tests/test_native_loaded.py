"""The compiled hot path must really be loaded: logplexd has no pure-Python fallback, and a
silently missing extension would make every native test above meaningless."""

from __future__ import annotations

import importlib
import importlib.machinery

import pytest

MODULES = ["batch", "framer", "ring", "router", "encode", "wire", "resp"]


@pytest.mark.parametrize("name", MODULES)
def test_native_module_is_a_compiled_extension(name: str) -> None:
    module = importlib.import_module(f"logplexd._native.{name}")
    path = module.__file__
    assert path is not None
    assert path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path
    assert isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)


def test_logplexd_native_imports() -> None:
    native = importlib.import_module("logplexd.native")
    for name in ("OctetFramer", "parse_body", "parse_frames", "Batch", "syslog_frames"):
        assert callable(getattr(native, name)), name
    framer = native.OctetFramer()
    batch = framer.feed(b"3 abc")
    assert batch.frames() == [b"abc"]
