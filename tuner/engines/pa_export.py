"""perf_analyzer's per-request export: where it is written (sized for the requests it will hold, beside the runs in
progress) and how it is read (mmap and substring search past the tensors, defensively: a damaged export is one
LoadToolError, or the requests read before the damage with a note of where it is).
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil

from tuner.engines.records import RequestRecords
from tuner.errors import LoadToolError
from tuner.inputs import Sample
from tuner.load import LoadSpec

INTERVAL_MS = 250  # perf_analyzer's measurement interval as the engine runs it: how often it looks at its SIGINT flag

# The export, as perf_analyzer writes it (rapidjson, compact; the key order is its own):
# {"experiments":[{"experiment":{...},"requests":[{"timestamp":N,["sequence_id":N,]["request_inputs":{...},]
#  "response_timestamps":[N,...][,"response_outputs":[...]]},...],"window_boundaries":[N,...]}],"version":"X",...}
# Inside JSON strings a quote is escaped, so a key cannot occur inside a tensor of an intact file.
REQUESTS_KEY = b'"requests":['
RECORD_START = b'{"timestamp":'
NEXT_RECORD = b',{"timestamp":'
SENT_KEY = b'"timestamp":'
RESPONSES_KEY = b'"response_timestamps":['
REQUESTS_END = b'],"window_boundaries":['
NANOSECONDS = re.compile(rb"\d{1,19}")  # int64 ns
NUMBER_LIST = re.compile(rb"\d{1,19}(?:,\d{1,19})*")
TAIL = re.compile(rb'(?:\d{1,19}(?:,\d{1,19})*)?\]\}\](?:,"\w+":(?:"[^"\\]*"|\d+(?:\.\d+)?))*\}\s*')
# A request of the timestamps-only export (2.43), read in one match; anything else takes the general path.
PLAIN_RECORD = re.compile(rb'\{"timestamp":(\d{1,19}),"response_timestamps":\[(\d{1,19}(?:,\d{1,19})*)?\]\}')
# perf_analyzer lists the requests window by window (each window's requests completed in it, windows back to
# back, 1.2 x INTERVAL_MS long): a request that completed this long before the last one read cannot be missing.
WINDOW_BOUND_NS = 4 * INTERVAL_MS * 1_000_000

# Sizing the export before the run: bytes per request x requests expected x runs at once.
TIMESTAMPS_ONLY_BYTES = 100  # a request in a 2.43 export: ~80 bytes measured
RECORD_BYTES = 200  # keys and timestamps of a request in a 2.44+ export, besides its tensors
JSON_BYTES_PER_ELEMENT = {"b": 6, "i": 21, "u": 21, "f": 25}  # bool, ints (INT64 at most), floats as %.17g
MAX_RATE_PER_IN_FLIGHT = 2000  # closed loop: requests/s per request in flight (0.5 ms a round trip) ...
MAX_RATE_PER_S = 50_000  # ... and in all: more than perf_analyzer sent anywhere (~14k/s on an H200)
DEFAULT_RUN_S = 120.0  # a run's length when the caller does not say (LoadSpec.run_s): warm-up + ten 10 s windows
RESERVATION = "reserved"  # in each run's folder: "pid bytes", the room it holds until its export is deleted
TMPFS = Path("/dev/shm")


class _Damage(Exception):
    """Where the scan of an export stopped; requests_complete when every request had been read already."""

    def __init__(self, offset: int, what: str, requests_complete: bool = False) -> None:
        super().__init__(what)
        self.offset, self.what, self.requests_complete = offset, what, requests_complete


def parse_export(path: Path, request_timeout_s: float | None = None, keep_partial: bool = False) -> RequestRecords:
    """Send and last-response times of every request in a perf_analyzer export; no response means failed.

    A damaged export (cut short, or not what perf_analyzer writes) is one LoadToolError naming the file and the free
    space of its filesystem; with keep_partial the requests read before the damage come back instead, with the
    damage and the completion time up to which none can be missing (RequestRecords.damage, complete_until_ns).
    perf_analyzer has no per-request timeout, so --request-timeout is applied here: a request answered later than
    that failed at its deadline ("Deadline Exceeded"), exactly as the built-in client would have recorded it.
    """
    timeout_ns = int(request_timeout_s * 1e9) if request_timeout_s is not None else None
    errors: list[str] = []
    send: list[int] = []
    done: list[int] = []
    ok: list[bool] = []
    last_done_ns = 0
    damage: _Damage | None = None
    size = 0
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise _Damage(0, "it is empty")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                hole = view.find(b"\0")  # a crash can leave zeros; rapidjson writes no NUL byte
                try:
                    for sent, responses in _scan_records(view, size if hole < 0 else hole):
                        send.append(sent)
                        if not responses:
                            done.append(sent)
                            ok.append(False)
                            if "perf_analyzer: request without a response" not in errors:
                                errors.append("perf_analyzer: request without a response")
                            continue
                        last = int(responses.rsplit(b",", 1)[-1])
                        last_done_ns = max(last_done_ns, last)
                        if timeout_ns is not None and last - sent > timeout_ns:
                            done.append(sent + timeout_ns)
                            ok.append(False)
                            if not any(e.startswith("Deadline Exceeded") for e in errors):
                                errors.append(f"Deadline Exceeded (answered after --request-timeout "
                                              f"{request_timeout_s:g} s)")
                            continue
                        done.append(last)
                        ok.append(True)
                except _Damage as exc:
                    if hole >= 0 and exc.offset >= hole:
                        exc.what = f"it holds a NUL byte at byte {hole} ({exc.what} there)"
                    raise
    except _Damage as exc:
        damage = exc
    except OSError as exc:
        damage = _Damage(size, f"it cannot be read ({exc.strerror or exc})")
    records = RequestRecords(np.array(send, np.int64), np.array(done, np.int64), np.array(ok, np.bool_),
                             tuple(errors))
    if damage is None:
        return records
    message = (f"perf_analyzer's export {path} is damaged at byte {damage.offset} of {size}: {damage.what}; "
               f"{free_space_text(path.parent)}")
    if not keep_partial:
        raise LoadToolError(message)
    until = None if damage.requests_complete else max(last_done_ns - WINDOW_BOUND_NS, 0)
    return RequestRecords(records.send_ns, records.done_ns, records.ok, records.errors, message, until)


def _scan_records(view: mmap.mmap, limit: int) -> Iterator[tuple[int, bytes]]:
    """(send ns, the response-timestamp list's bytes) per request, in file order, up to byte `limit`; _Damage where
    the file stops being an export. Substring search skips the tensors at C speed (a regex over them ran at
    ~70 MB/s; a GPU trial's 2.51 export is gigabytes)."""
    find = view.find
    opened = find(REQUESTS_KEY, 0, min(limit, 4096))
    if opened < 0:
        raise _Damage(min(limit, 4096), "it has no request list at its start")
    pos = opened + len(REQUESTS_KEY)
    if view[pos:pos + 1] == b"]":  # no request at all
        _check_tail(view, pos, limit)
        return
    if view[pos:pos + len(RECORD_START)] != RECORD_START:
        raise _Damage(pos, "its request list does not start with a request" if pos + len(RECORD_START) <= limit
                      else "it ends before its first request")
    while True:
        plain = PLAIN_RECORD.match(view, pos, limit)
        if plain is not None:
            yield int(plain[1]), plain[2] or b""
            close = plain.end() - 2  # at the response list's "]"
        else:
            sent, close, responses = _general_record(view, pos, limit)
            yield sent, responses
        nxt = find(NEXT_RECORD, close, limit)
        ended = find(REQUESTS_END, close, nxt if nxt >= 0 else limit)
        if ended >= 0:
            if view[ended - 1] != ord("}"):
                raise _Damage(ended, "its last request is not closed")
            _check_tail(view, ended, limit)
            return
        if nxt < 0:
            closed = find(b'}],"', close, limit)  # the request list's end (a request's outputs never hold it)
            if closed >= 0:
                _check_tail(view, closed + 1, limit)  # every request was read; what follows them is damaged
            raise _Damage(limit, "it ends after the request at byte "
                          f"{pos} (inside that request's outputs or before the next request)")
        if view[nxt - 1] != ord("}"):
            raise _Damage(nxt, f"a request starts inside the request at byte {pos}")
        pos = nxt + 1


def _general_record(view: mmap.mmap, pos: int, limit: int) -> tuple[int, int, bytes]:
    """The request at `pos` (at its '{"timestamp":'), tensors and all: (send ns, the response list's "]", its bytes)."""
    start = pos + len(RECORD_START)
    digits = NANOSECONDS.match(view, start, limit)
    if start >= limit or (digits is not None and digits.end() >= limit):
        raise _Damage(limit, "it ends inside a request's timestamp")
    if digits is None:
        raise _Damage(start, "a request's timestamp is not a number")
    after = digits.end()
    if view[after] not in b",}":
        raise _Damage(after, "a request's timestamp is not a nanosecond count")
    listed = view.find(RESPONSES_KEY, after, limit)
    intruder = view.find(SENT_KEY, after, listed if listed >= 0 else limit)
    if intruder >= 0:
        raise _Damage(intruder, f"a timestamp key inside the request at byte {pos} (before its response list)")
    if listed < 0:
        raise _Damage(limit, f"it ends inside the request at byte {pos} (before its response list)")
    first = listed + len(RESPONSES_KEY)
    close = view.find(b"]", first, limit)
    if close < 0:
        raise _Damage(limit, f"it ends inside the response list of the request at byte {pos}")
    if close > first and NUMBER_LIST.fullmatch(view, first, close) is None:
        raise _Damage(first, f"the response list of the request at byte {pos} is not a list of nanosecond counts")
    return int(view[start:after]), close, view[first:close]


def _check_tail(view: mmap.mmap, pos: int, limit: int) -> None:
    """After the request list (pos at its "]"): the window boundaries and the closing brackets, up to the end."""
    boundaries = pos + len(REQUESTS_END)
    if boundaries > limit and REQUESTS_END.startswith(view[pos:limit]):
        raise _Damage(limit, "it ends after its requests, before its window boundaries", True)
    if view[pos:boundaries] != REQUESTS_END:
        raise _Damage(pos, "its request list is not followed by window boundaries", True)
    if TAIL.fullmatch(view, boundaries, limit) is None:
        raise _Damage(limit, "its window boundaries or closing brackets are cut or malformed", True)


def free_space_text(directory: Path) -> str:
    """'N GB free on its filesystem (DIR)', for messages about a file in DIR."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        return f"free space on its filesystem unknown ({exc.strerror or exc})"
    return f"{_gb(free)} free on its filesystem ({directory})"


def _gb(size: float) -> str:
    return f"{size / 1e6:.0f} MB" if size < 1e9 else f"{size / 1e9:.1f} GB"


def export_bytes_per_request(samples: list[Sample], output_elements: list[tuple[str, int]], tensors: bool) -> int:
    """Bytes a request takes in the export: timestamps only (2.43), or also its largest sample's input tensors and
    its outputs (numpy dtype kind, element count) as JSON numbers (2.44 on)."""
    if not tensors:
        return TIMESTAMPS_ONLY_BYTES
    inputs = max((sum(_json_bytes(value) for value in sample.values()) for sample in samples), default=0)
    outputs = sum(count * JSON_BYTES_PER_ELEMENT.get(kind, 25) for kind, count in output_elements)
    return RECORD_BYTES + inputs + outputs


def _json_bytes(value: np.ndarray) -> int:
    if value.dtype == np.object_:  # BYTES: a JSON string, escapes and all
        return sum(2 * len(v if isinstance(v, bytes) else str(v).encode()) + 6 for v in value.reshape(-1))
    return int(value.size) * JSON_BYTES_PER_ELEMENT.get(value.dtype.kind, 25)


def expected_requests(load: LoadSpec) -> int:
    """Requests one run may complete: the asked rate, or a generous bound on a closed loop's, over the run's length."""
    run_s = (load.run_s or DEFAULT_RUN_S) * 1.25 + 5.0  # the bench's own pauses between windows, and the stop
    if load.request_rate_per_s is not None:
        rate = load.request_rate_per_s * 1.1
    else:
        rate = min((load.concurrency or 1) * MAX_RATE_PER_IN_FLIGHT, MAX_RATE_PER_S)
    return math.ceil(rate * run_s)


def export_dir(need_bytes: int) -> Path:
    """tmpfs (/dev/shm) where it has room for need_bytes besides the exports of the runs in progress, else the system
    temp dir; LoadToolError naming the folder, its free space and the need when neither has room."""
    tried = []
    for directory in (TMPFS, Path(tempfile.gettempdir())):
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            continue
        if not os.access(directory, os.W_OK):
            continue
        held = reserved_bytes(directory)
        if free - held >= need_bytes:
            return directory
        tried.append(f"{directory} has {_gb(free)} free" + (f" ({_gb(held)} held by runs in progress)" if held else ""))
    raise LoadToolError(f"no room for perf_analyzer's export: it needs ~{_gb(need_bytes)} and "
                        f"{' and '.join(tried) or 'no writable temp folder was found'}")


def reserved_bytes(directory: Path, own: Path | None = None) -> int:
    """Bytes held in `directory` by perf_analyzer runs in progress (their processes alive), `own` run's aside."""
    total = 0
    for marker in directory.glob(f"greentune-pa-*/{RESERVATION}"):
        if marker.parent == own:
            continue
        try:
            pid, need = (int(v) for v in marker.read_text().split())
        except (OSError, ValueError):
            continue
        if psutil.pid_exists(pid):
            total += need
    return total


@functools.lru_cache(maxsize=8)
def exports_tensors(binary: Path, env_key: tuple[tuple[str, str], ...]) -> bool:
    """True when this perf_analyzer writes tensors into its export (2.44 on, or a version it does not tell)."""
    try:
        shown = subprocess.run([str(binary), "--version"], env={**os.environ, **dict(env_key)}, capture_output=True,
                               text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    found = re.search(r"Version (\d+)\.(\d+)", shown)
    return found is None or (int(found[1]), int(found[2])) >= (2, 44)
