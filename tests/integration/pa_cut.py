"""A stand-in for perf_analyzer (run as --perf-analyzer PATH): it runs the real one, keeps a copy of its export, and
cuts the export of one run short, as a full disk or a crash while writing would. Used by test_engines.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

CUTS = ["digits", "tensor_or_timestamp", "response_list", "between_records", "end"]


def cut_at(data: bytes, where: str, fraction: float = 0.5) -> int:
    """A byte offset in a real export: inside a response timestamp's digits, inside the request's tensors (2.51) or
    its send timestamp (2.43), just inside its response list, between it and the next request, or at the very end,
    for the request `fraction` of the way through the file."""
    record = data.index(b'{"timestamp":', int(len(data) * fraction))
    responses = data.index(b'"response_timestamps":[', record) + len(b'"response_timestamps":[')
    if where == "digits":
        return responses + 7
    if where == "tensor_or_timestamp":
        inputs = data.find(b'"request_inputs":{', record, responses)
        return inputs + 40 if inputs >= 0 else record + len(b'{"timestamp":') + 7
    if where == "response_list":
        return responses
    if where == "between_records":
        return data.index(b'},{"timestamp":', record) + 2
    if where == "end":
        return len(data) - 1
    raise ValueError(where)


def main() -> None:
    """Run GT_TEST_REAL_PA with the arguments; after a run with an export, count it, copy the export to
    GT_TEST_KEEP, and cut it at GT_TEST_CUT (GT_TEST_CUT_FRACTION through it) when it is run GT_TEST_CUT_RUN."""
    args = sys.argv[1:]
    proc = subprocess.Popen([os.environ["GT_TEST_REAL_PA"], *args],
                            env={**os.environ, **json.loads(os.environ["GT_TEST_REAL_ENV"])})
    signal.signal(signal.SIGINT, lambda *_: proc.send_signal(signal.SIGINT))
    code = proc.wait()
    if "--profile-export-file" in args and code == 0:
        export = args[args.index("--profile-export-file") + 1]
        counter = os.environ["GT_TEST_COUNTER"]
        run = int(open(counter).read() or 0) + 1 if os.path.exists(counter) else 1
        with open(counter, "w") as out:
            out.write(str(run))
        if os.environ.get("GT_TEST_KEEP"):
            shutil.copyfile(export, os.environ["GT_TEST_KEEP"])
        where = os.environ.get("GT_TEST_CUT")
        if where and run == int(os.environ.get("GT_TEST_CUT_RUN", "1")):
            with open(export, "rb") as handle:
                data = handle.read()
            with open(export, "wb") as handle:
                handle.write(data[:cut_at(data, where, float(os.environ.get("GT_TEST_CUT_FRACTION", "0.5")))])
    sys.exit(code)


if __name__ == "__main__":
    main()
