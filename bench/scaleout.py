"""Scale-out: trials per minute with 1 and 2 `greentune worker` processes on one shared study, and the per-trial
coordination overhead (time in storage calls: ask, dedupe reads, heartbeats, tell, result attributes).

1. Coordination overhead, no server: the real shared-study loop (tuner.search.Search) with a bench that measures
   in zero time, so every second spent is storage and bookkeeping; per trial, for 1 and 2 workers (threads), on a
   journal file and, with --postgres URL, on PostgreSQL.
2. Throughput, real servers: 1 worker, then 2 workers (each with its own embedded CPU Triton server) on a journal
   study of --trials configs; trials per minute from the first worker's start to the last one's exit. On a
   2-core machine the two servers compete for the cores, so the overhead (1.) is the figure to quote.

Run it inside the shared-server lock: flock /tmp/greentune-server.lock python bench/scaleout.py [--postgres URL]
usage: python bench/scaleout.py [--trials 6] [--postgres URL] [--skip-servers]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPACE = """
knobs:
  instance_kind: KIND_CPU
  instance_count: {type: int, low: 1, high: 3}
  max_batch_size: {type: pow2, low: 4, high: 32}
  dynamic_batching: {type: bool}
"""
FAST = ["--warmup", "0.5", "--window", "1", "--max-windows", "6", "--stability", "0.25", "-c", "4",
        "--idle-seconds", "0.5"]


def overhead(url: str, workers: int, trials: int) -> float:
    """Seconds of coordination per trial: the shared loop with a zero-time bench."""
    from tests.unit.test_search_loop import FakeBench, make_job
    from tuner.job import SearchSettings
    from tuner.search import Search
    from tuner.storage import Heartbeat

    settings = SearchSettings(trials=trials, storage=url, study=f"overhead-{uuid.uuid4().hex[:8]}",
                              heartbeat=Heartbeat(5, 30), poll_s=0.01)
    with tempfile.TemporaryDirectory() as tmp:
        searches = [Search(make_job(Path(tmp) / f"w{i}", space=SPACE), settings) for i in range(workers)]
        searches[0].open()  # the study exists before the clock starts
        started = time.perf_counter()
        threads = [threading.Thread(target=s.run, args=(FakeBench(),)) for s in searches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return (time.perf_counter() - started) / trials


def with_servers(workers: int, trials: int) -> float:
    """Trials per minute of `workers` real worker processes on one journal study."""
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.yaml"
        space.write_text(SPACE)
        url = f"journal://{tmp}/study.journal"
        args = [sys.executable, "-m", "tuner", "worker", "-r", str(ROOT / "model_repository"), "-m", "mlp",
                "--space", str(space), *FAST, "--storage", url, "--study", "scaleout", "--trials", str(trials)]
        started = time.perf_counter()
        procs = []
        for i in range(workers):
            procs.append(subprocess.Popen([*args, "-o", f"{tmp}/w{i}"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "160"}))
            if i == 0:
                time.sleep(3)  # the first creates the study
        for proc in procs:
            _, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"worker failed ({proc.returncode}): {err[-2000:]}")
        return trials / ((time.perf_counter() - started) / 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL for the overhead figure")
    parser.add_argument("--skip-servers", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"journal file": f"journal://{tmp}/overhead.journal"}
        if opts.postgres:
            stores["PostgreSQL"] = opts.postgres
        for label, url in stores.items():
            for workers in (1, 2):
                per_trial = overhead(url, workers, 12)
                print(f"coordination overhead, {label}, {workers} worker(s): {per_trial * 1000:.0f} ms per trial "
                      f"(wall time / trials with a zero-time bench, 12 trials)")
    if not opts.skip_servers:
        one = with_servers(1, opts.trials)
        two = with_servers(2, opts.trials)
        print(f"real servers, journal study, {opts.trials} trials: 1 worker {one:.2f} trials/min, "
              f"2 workers {two:.2f} trials/min (ratio {two / one:.2f}; {os.cpu_count()} cores shared)")


if __name__ == "__main__":
    main()
