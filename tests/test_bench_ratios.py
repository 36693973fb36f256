"""The e2e harness's figures quoted in bench/RESULTS.md: its same-run ratios
(``bench/e2e/run.py --ratios``) and each run's busiest thread and idle machine, checked here
on made-up runs and samples (and the /proc reads behind the latter on this process)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_script(name: str, path: Path) -> ModuleType:
    """A bench script as module ``name`` (registered first: dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


e2e = load_script("e2e_run", BENCH / "e2e" / "run.py")


def result(run: int, rate: float, cpu_s: float, lost: int = 0) -> object:
    return e2e.RunResult(
        rate=rate, ingest_rate=rate, delivered=1_000_000, expected=1_000_000, lost=lost,
        duplicates=0, l10_dropped=0, out_of_order=0, cpu_s=cpu_s, peak_rss_kb=None, run=run,
    )  # fmt: skip


def test_runs_are_compared_by_their_number_not_their_place() -> None:
    # Run 1 of b failed (missing): a's run 1 has no pair, and run 2 pairs with run 2.
    a = [result(0, 100, 2.0), result(1, 999, 9.0), result(2, 300, 3.0)]
    b = [result(2, 200, 2.0), result(0, 200, 1.0)]
    got = e2e.pair_ratios(a, b)
    assert got == {
        "rate": pytest.approx(1.0),  # median of 0.5 and 1.5
        "rate_min": pytest.approx(0.5),
        "rate_max": pytest.approx(1.5),
        "cpu": pytest.approx(1.75),  # median of 2.0 and 1.5
        "pairs": 2,
        "faster": 1,
        "lossy": 0,
    }
    assert e2e.pair_ratios(a, []) is None


def test_a_lossy_run_on_either_side_is_counted() -> None:
    got = e2e.pair_ratios([result(0, 1, 1.0, lost=3)], [result(0, 1, 1.0)])
    assert got is not None and got["lossy"] == 1


def test_ratios_from_a_saved_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = {
        "logplexd-redis/c1-ch1-d1-120": [vars(result(0, 2.0, 3.0)), vars(result(1, 3.0, 3.0))],
        "logplexd/c1-ch1-d1-120": [vars(result(0, 4.0, 2.0)), vars(result(1, 4.0, 2.0))],
    }
    for runs in saved.values():
        for run in runs:
            del run["run"]  # a file from before runs were numbered: paired in order
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(saved))
    assert e2e.main(["--ratios-from", str(path), "--ratios", "logplexd-redis/logplexd"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row == (
        "| 1 conn, 1 channel, 1 drain, 120 B | logplexd-redis / logplexd | 0.62x (0.50-0.75) "
        "| 0 | 1.50x | 2 | 0 |"
    )
    with pytest.raises(SystemExit):
        e2e.main(["--ratios-from", str(path), "--ratios", "logplexd/rsyslog"])


def test_bench_nodes_compares_each_set_up_with_the_embedded_node_run_by_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # bench_nodes.py puts bench/ on sys.path and loads run.py again: both undone after.
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("bench_nodes", "tails", "e2e_run"):
        if name in sys.modules:
            monkeypatch.setitem(sys.modules, name, sys.modules[name])
        else:
            monkeypatch.delitem(sys.modules, name, raising=False)
    nodes = load_script("bench_nodes", BENCH / "bench_nodes.py")

    def run(rate: float, cpu_s: float, lost: int = 0) -> object:
        return nodes.NodesRun(
            rate=rate, delivered=1_000_000, expected=1_000_000, lost=lost, duplicates=0,
            l10=0, node_cpu=cpu_s,
        )  # fmt: skip

    numbered = {
        "embedded": {0: run(4.0, 1.0), 2: run(2.0, 1.0)},  # its run 1 failed
        "redis-1": {0: run(2.0, 1.5), 1: run(9.0, 9.0), 2: run(2.0, 2.0, lost=1)},
    }
    got = nodes.versus_embedded(numbered, "redis-1")
    assert got is not None
    assert (got["rate"], got["rate_min"], got["rate_max"]) == (0.75, 0.5, 1.0)
    assert (got["cpu"], got["pairs"], got["faster"], got["lossy"]) == (1.75, 2, 0, 1)
    assert nodes.versus_embedded(numbered, "embedded") is None
    assert nodes.versus_embedded({"redis-1": numbered["redis-1"]}, "redis-1") is None


def sample(at: float, threads: dict[str, float], idle: int, total: int) -> object:
    return e2e.Sample(at, threads, (idle, total))


def test_a_runs_busiest_thread_and_idle_machine_come_from_the_samples_inside_its_span() -> None:
    samples = [
        sample(9.0, {"1/1": 0.0}, 0, 0),  # warm-up: before the timed span
        sample(10.1, {"1/1": 1.0, "1/2": 5.0}, 100, 400),
        sample(10.6, {"1/1": 1.2, "1/2": 5.1}, 150, 600),
        sample(11.1, {"1/1": 1.9, "1/2": 5.2, "1/3": 0.3}, 210, 800),
        sample(14.0, {"1/1": 2.0, "1/2": 5.2, "1/3": 0.3}, 500, 1400),  # after it: idle
    ]
    first, last = e2e.within(samples, 10.0, 11.5)
    assert (first.at, last.at) == (10.1, 11.1)
    busiest, idle = e2e.busiest_and_idle(first, last)
    # Thread 1/1 used 0.9 s of the 1.0 s; 1/3, started meanwhile, 0.3 s; 1/2 0.2 s.
    assert busiest == pytest.approx(0.9)
    assert idle == pytest.approx(110 / 400)
    assert e2e.within(samples, 10.2, 10.7) is None  # one sample inside: no figure


def test_the_cpu_line_of_proc_stat_gives_idle_and_total_ticks() -> None:
    stat = "cpu  100 5 50 800 20 3 7 11 0 0\ncpu0 50 2 25 400 10 1 3 5 0 0\nintr 12345\n"
    # idle + iowait, and user..steal (guest time is inside user already).
    assert e2e.cpu_ticks(stat) == (820, 996)
    with pytest.raises(ValueError):
        e2e.cpu_ticks("intr 1\n")


def test_thread_seconds_reads_every_thread_of_a_process() -> None:
    started, stop = threading.Event(), threading.Event()

    def wait() -> None:
        started.set()
        stop.wait()

    helper = threading.Thread(target=wait)
    helper.start()
    try:
        started.wait()
        seen = e2e.thread_seconds([os.getpid()])
        tids = {key.split("/")[1] for key in seen}
        assert str(threading.get_native_id()) in tids and str(helper.native_id) in tids
        assert all(seconds >= 0 for seconds in seen.values())
        assert e2e.thread_seconds([2**22 + 12345]) == {}  # gone: nothing, no error
    finally:
        stop.set()
        helper.join()


def test_a_prefill_reaches_the_sink_before_the_timed_part_and_is_not_counted_in_it(
    tmp_path: Path,
) -> None:
    """``run_once(prefill=N)``: loadgen first sends N messages as streams of their own
    (``-C``), the sink says when it has them (``-P``), then the timed part runs. The run's
    delivered count and rate are the timed part's; the sink checked both for loss and
    duplicates (the timed part's sequences start at 0 again on other streams)."""
    tools = e2e.build_tools(tmp_path)
    workload = next(w for w in e2e.WORKLOADS if w.key == "c1-ch1-d1-120")
    res = e2e.run_once(e2e.Direct, workload, 2_000, tools, idle=5.0, prefill=3_000)
    assert res.delivered == res.expected == 2_000
    assert (res.lost, res.duplicates, res.out_of_order) == (0, 0, 0)
    assert res.sink["unique"] == 5_000 and res.loadgen["sent"] == 2_000
    assert res.sink["streams"] == 2  # connection 0, and the prefill's connection 1024
