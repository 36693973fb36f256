"""A few seconds of the atheris fuzzers, and a replay of their seed corpora (``fuzz/``):
the framer's (``fuzz_framer.py``) and the HTTP server's (``fuzz_http.py``).

The replay needs nothing but the native module and the oracle. The short fuzz run needs
atheris (``pip install atheris``) and is skipped without it; it fuzzes the tree's normal
build in pure-Python coverage mode, with a fixed seed and a fixed number of runs. Long runs
with native coverage: ``fuzz/run.sh``.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

FUZZ = ROOT / "fuzz"
CORPUS = FUZZ / "corpus" / "framer"
sys.path.insert(0, str(FUZZ))

import fuzz_http  # noqa: E402
from fuzz_framer import check, decode, split  # noqa: E402

HTTP_CORPUS = FUZZ / "corpus" / "http"


def test_corpus_is_there() -> None:
    assert len(list(CORPUS.iterdir())) >= 20


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name[:10])
def test_corpus_replays_clean(path: Path) -> None:
    check(path.read_bytes())


def test_http_corpus_has_the_framing_cases() -> None:
    """Issue 22: Content-Length with Transfer-Encoding, and chunk headers declaring more
    than the limit, are seeds (``make_corpus.py --http`` writes them)."""
    streams = [fuzz_http.decode(p.read_bytes())[3] for p in HTTP_CORPUS.iterdir()]
    assert len(streams) >= 40
    both = [s for s in streams if b"Content-Length" in s and b"Transfer-Encoding" in s]
    assert any(b"/smuggled" in s for s in both)
    assert any(b"\r\n40000000\r\n" in s for s in streams)
    assert any(b"\r\nffffffffffffffffff\r\n" in s for s in streams)


@pytest.mark.parametrize("path", sorted(HTTP_CORPUS.iterdir()), ids=lambda p: p.name[:10])
def test_http_corpus_replays_clean(path: Path) -> None:
    fuzz_http.check(path.read_bytes())


def test_decode_layout() -> None:
    assert decode(b"") == (10240, [b""], b"")
    assert decode(b"\x00\x02\x00\x01abcdef") == (1, [b"a", b"bc", b"def"], b"abcdef")
    assert split(b"abc", b"\xff\x00") == [b"abc"]


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="pip install atheris")
@pytest.mark.may_skip(
    when=platform.machine() != "x86_64", reason="atheris is a test dependency on x86_64 only"
)
@pytest.mark.parametrize(
    ("harness", "seeds"), [("fuzz_framer.py", CORPUS), ("fuzz_http.py", HTTP_CORPUS)]
)
def test_short_fuzz_run(tmp_path: Path, harness: str, seeds: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(seeds, corpus)
    env = dict(os.environ)
    env.pop("LOGPLEXD_FUZZ_NATIVE_COVERAGE", None)
    runs = 6000
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ / harness),
            "-seed=1",
            f"-runs={runs}",
            "-timeout=10",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    # libFuzzer stops once it has made ``runs`` runs; its count may pass that by one
    # (seen: "Done 6001 runs" for -runs=6000).
    done = re.search(r"Done (\d+) runs", proc.stderr)
    assert done is not None and runs <= int(done.group(1)) <= runs + 1, tail
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*")), tail


def test_empty_payload_batch() -> None:
    """Regression (found by bench/asan.sh): a fresh Batch given a 0-byte payload did
    memcpy(NULL, src, 0), undefined behaviour that UBSan aborts on. Run under bench/asan.sh
    this test (and the corpus replay) is the real check; here it pins the behaviour."""
    from logplexd._native.framer import parse_frames

    batch = parse_frames([b"", b"a b c d"])
    assert batch.frames() == [b"", b"a b c d"]
    assert batch.fields(0)["valid"] is False and batch.fields(0)["app"] is None
    assert batch.fields(1)["app"] == b"d"
