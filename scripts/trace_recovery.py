#!/usr/bin/env python3
"""Per-segment breakdown of PostgreSQL's startup process from an `strace -f` trace.

Why: in archive recovery through `restore_command`, the startup process replays nothing
while it starts the command, waits for it and makes the restored file durable. This
reads the trace `scripts/trace_recovery.sh` takes (strace -f -ttt -T -y of the
postmaster and everything it starts) and splits the time between two successive
`restore_command` calls into:

  spawn    the startup process's fork of `sh -c …` until wale's execve
  wale     wale's process from its execve to its exit_group (loading included)
  reap     wale's exit until the startup process's wait4 returns
  fsync    the fsyncs the startup process makes then (KeepFileRestoredFromArchive:
           durable_rename fsyncs the file, its new name and pg_wal)
  rename   its renames
  replay   the rest, until the next call (replay of the segment, reading it)

Usage: python3 scripts/trace_recovery.py TRACE [POSTGRES_LOG]
Standard library only. Prints one line per restored segment, then the medians and
the totals; the prefetcher's fsyncs (off the startup process's path) are summed apart.
"""

from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass, field

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
CALL = re.compile(r"^(\w+)\((.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
DURATION = re.compile(r"<(\d+\.\d+)>\s*$")
RETURN = re.compile(r"\)\s+=\s+(-?\d+|\?)")
SEGMENT = re.compile(r'wal-fetch[^"]*?\\?"([0-9A-F]{24})\\?"')


@dataclass
class Syscall:
    tid: int
    name: str
    start: float
    end: float
    text: str

    @property
    def ret(self) -> int | None:
        m = RETURN.search(self.text)
        if not m or m.group(1) == "?":
            return None
        return int(m.group(1))


@dataclass
class Call:
    child: int
    start: float
    end: float = 0.0
    ok: bool = False
    segment: str | None = None
    wale: int | None = None
    wale_exec: float | None = None
    wale_exit: float | None = None
    fsyncs: list[float] = field(default_factory=list)
    renames: float = 0.0


def parse(path: str) -> list[Syscall]:
    calls: list[Syscall] = []
    pending: dict[tuple[int, str], tuple[float, str]] = {}
    with open(path, errors="replace") as trace:
        for raw in trace:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            tid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            if rest.startswith("+++") or rest.startswith("---"):
                continue
            resumed = RESUMED.match(rest)
            if resumed:
                name = resumed.group(1)
                start, head = pending.pop((tid, name), (ts, ""))
                text = head + resumed.group(2)
            else:
                c = CALL.match(rest)
                if not c:
                    continue
                name = c.group(1)
                if rest.endswith("<unfinished ...>"):
                    pending[(tid, name)] = (ts, c.group(2))
                    continue
                start, text = ts, c.group(2)
            d = DURATION.search(text)
            end = start + float(d.group(1)) if d else start
            calls.append(Syscall(tid, name, start, end, text))
    calls.sort(key=lambda s: s.start)
    return calls


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    syscalls = parse(sys.argv[1])
    # Threads belong to the process that made them; processes to their parent.
    process: dict[int, int] = {}
    parent: dict[int, int] = {}
    for s in syscalls:
        if s.name in ("clone", "clone3", "vfork", "fork") and (s.ret or 0) > 0:
            owner = process.get(s.tid, s.tid)
            if "CLONE_THREAD" in s.text:
                process[s.ret] = owner
            else:
                parent[s.ret] = owner
    proc = lambda tid: process.get(tid, tid)  # noqa: E731
    execs = [s for s in syscalls if s.name == "execve" and s.ret == 0]
    shells = [s for s in execs if "wal-fetch" in s.text and s.text.startswith('"/bin/sh"')]
    if not shells:
        print("no restore_command call in the trace", file=sys.stderr)
        return 1
    startup = parent[proc(shells[0].tid)]
    prefetchers = {proc(s.tid) for s in execs if "wal-prefetch" in s.text}

    calls: dict[int, Call] = {}
    order: list[Call] = []
    for s in syscalls:
        owner = proc(s.tid)
        if owner == startup:
            if s.name in ("clone", "clone3", "vfork", "fork") and (s.ret or 0) > 0:
                call = Call(child=s.ret, start=s.start)
                calls[s.ret] = call
                order.append(call)
            elif s.name == "wait4" and s.ret in calls:
                calls[s.ret].end = s.end
                calls[s.ret].ok = "WEXITSTATUS(s) == 0" in s.text
            elif order and order[-1].end and s.name in ("fsync", "fdatasync"):
                order[-1].fsyncs.append(s.end - s.start)
            elif order and order[-1].end and s.name.startswith("rename"):
                order[-1].renames += s.end - s.start
            continue
        # A process below a call: the shell, or wale.
        top = owner
        while top in parent and parent[top] != startup:
            top = parent[top]
        call = calls.get(top) if parent.get(top) == startup else None
        if call is None:
            continue
        if s.name == "execve" and s.ret == 0:
            m = SEGMENT.search(s.text)
            if m and call.segment is None:
                call.segment = m.group(1)
            # The first wale below the shell (not the prefetcher it may start).
            if "/wale" in s.text.split(",")[0] and call.wale is None:
                call.wale, call.wale_exec = owner, s.start
        elif s.name == "exit_group" and owner == call.wale:
            call.wale_exit = s.start

    rows = []
    for i, call in enumerate(order):
        if not (call.ok and call.segment and call.wale_exec and call.wale_exit):
            continue
        nxt = order[i + 1].start if i + 1 < len(order) else None
        if nxt is None:
            continue
        fsync = sum(call.fsyncs)
        row = {
            "segment": call.segment,
            "spawn": call.wale_exec - call.start,
            "wale": call.wale_exit - call.wale_exec,
            "reap": call.end - call.wale_exit,
            "fsync": fsync,
            "fsyncs": len(call.fsyncs),
            "rename": call.renames,
            "replay": nxt - call.end - fsync - call.renames,
        }
        row["total"] = nxt - call.start
        rows.append(row)
    cols = ["spawn", "wale", "reap", "fsync", "rename", "replay", "total"]
    print(f"{'segment':24}  " + "  ".join(f"{c:>7}" for c in cols) + "   (ms)")
    for r in rows:
        print(f"{r['segment']:24}  " + "  ".join(f"{r[c] * 1000:7.1f}" for c in cols)
              + f"   {r['fsyncs']} fsyncs")
    if not rows:
        return 1
    print(f"{'median':24}  " + "  ".join(
        f"{statistics.median(r[c] for r in rows) * 1000:7.1f}" for c in cols))
    print(f"{'total (s)':24}  " + "  ".join(
        f"{sum(r[c] for r in rows):7.2f}" for c in cols))
    fs = [s for s in syscalls if proc(s.tid) in prefetchers and s.name in ("fsync", "fdatasync")]
    if fs:
        print(f"prefetcher: {len(fs)} fsyncs, {sum(s.end - s.start for s in fs):.2f} s in all, "
              f"median {statistics.median(s.end - s.start for s in fs) * 1000:.1f} ms")
    print(f"{len(rows)} segments restored through restore_command "
          f"({len(order)} calls in all); startup process {startup}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
