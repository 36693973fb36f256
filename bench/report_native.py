"""Turn a pytest-benchmark JSON of bench/test_bench_native.py into rates and ratios."""

import json
import sys


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data["benchmarks"]:
        count = b["extra_info"].get("frames") or b["extra_info"].get("messages")
        rows[b["name"]] = (b["stats"]["median"], count)
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}")
    for name, (median, count) in rows.items():
        print(f"{name:45s} {count / median / 1e6:8.2f} M msgs/s  (median {median * 1e3:.2f} ms)")
    native = rows.get("test_framer_fields_native")
    ref = rows.get("test_framer_fields_reference")
    if native and ref:
        print(f"framer+fields native / reference: {ref[0] / native[0]:.1f}x")


if __name__ == "__main__":
    main(sys.argv[1])
