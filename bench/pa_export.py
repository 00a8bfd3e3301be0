"""How fast greentune reads a perf_analyzer export: the parser against a plain regex over the same file.

perf_analyzer 2.51 writes every request's input and output tensors into its per-request export, so an H100 trial
(~11.5k infer/s, 1,024-float input and output) exports gigabytes. The file here has the same layout (perf_analyzer's
key order, floats as it prints them); the ratio regex time / parser time is the speed-up, MB/s the absolute pace.

usage: python bench/pa_export.py [--requests 20000] [--floats 1024]
"""

from __future__ import annotations

import argparse
import mmap
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.engines.perf_analyzer import parse_export  # noqa: E402

T0 = 1_795_693_321_446_201_880
REGEX = re.compile(rb'"timestamp":(\d+),.*?"response_timestamps":\[([0-9,]*)\]', re.DOTALL)  # the first parser


def write_export(path: Path, requests: int, floats: int) -> None:
    rng = np.random.default_rng(0)
    tensor = ",".join(f"{v:.9g}" for v in rng.standard_normal(floats)).encode()
    with open(path, "wb") as out:
        out.write(b'{"experiments":[{"experiment":{"mode":"concurrency","value":32},"requests":[')
        for i in range(requests):
            sent = T0 + i * 87_000
            out.write(b"," if i else b"")
            out.write(b'{"timestamp":%d,"request_inputs":{"X":[%s]},"response_timestamps":[%d],'
                      b'"response_outputs":[{"Y":[%s]}]}' % (sent, tensor, sent + 4_000_000, tensor))
        out.write(b'],"window_boundaries":[]}],"version":"2.51.0","service_kind":"triton","endpoint":""}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--floats", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.json"
        write_export(path, args.requests, args.floats)
        size_mb = path.stat().st_size / 1e6
        started = time.perf_counter()
        records = parse_export(path)
        parser_s = time.perf_counter() - started
        started = time.perf_counter()
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            matched = sum(1 for _ in REGEX.finditer(view))  # type: ignore[call-overload]
        regex_s = time.perf_counter() - started
    assert len(records) == matched == args.requests
    print(f"export: {args.requests} requests, {args.floats} floats in and out, {size_mb:.0f} MB")
    print(f"parser: {parser_s:.2f} s ({size_mb / parser_s:.0f} MB/s); regex: {regex_s:.2f} s "
          f"({size_mb / regex_s:.0f} MB/s); speed-up {regex_s / parser_s:.1f}x")


if __name__ == "__main__":
    main()
