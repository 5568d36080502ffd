#!/usr/bin/env python3
"""Merge the benchmark suite's JSON results into a Markdown report and an SVG chart.

Why: every benchmark (`cargo bench --bench ...`) measures wale against its baselines
(lzop, cp, WAL-E) in the same run and writes one JSON file. This script turns those
files into `benchmarks/results.md` (every measurement, plus the machine it ran on), a
chart of the wale / baseline ratios (`benchmarks/ratios.svg`) and, optionally, the
short summary between the `<!-- bench-results:start -->` / `<!-- bench-results:end -->`
markers of the README, so published numbers always come from one run of one machine.
Standard library only (Python 3.11).

Usage:
    python3 scripts/bench_report.py RESULTS_DIR --markdown benchmarks/results.md \\
        --svg benchmarks/ratios.svg [--readme README.md] [--archive-meta PATH/meta.env] \\
        [--mode quick|full] [--elapsed-seconds N] [--svg-link P] [--report-link P]

Input: every `*.json` in RESULTS_DIR, read in name order, each shaped like

    {
      "bench": "wal_fetch",
      "rows": [
        {"section": "wal-fetch, cold process", "case": "16 MiB segment, S3 loopback",
         "tool": "wale", "median_s": 0.0136, "p90_s": 0.015, "runs": 15,
         "peak_rss_kb": null, "bytes": 16777216, "note": ""}
      ],
      "comparisons": [
        {"label": "cold wal-fetch, S3", "section": "wal-fetch, cold process",
         "case": "16 MiB segment, S3 loopback", "subject": "wale",
         "baseline": "WAL-E 1.1.1", "max_ratio": 0.0667,
         "target": "≥ 15× faster than WAL-E"}
      ]
    }

rows: one tool measured in one case. `median_s` (required, > 0) and `p90_s` are wall
    times in seconds; `runs`, `p90_s`, `peak_rss_kb` (the child's ru_maxrss, KiB),
    `bytes` (data the case processes, decompressed; gives an MB/s column) and `note`
    may be null or absent.
comparisons: one line of the targets table. Both rows are looked up in the same
    section and case by tool name; ratio = subject median / baseline median (below 1:
    wale is faster), speed-up = 1 / ratio. The target is met when ratio <= max_ratio
    (and, with the optional `max_subject_s`, the subject's median is at most that many
    seconds); `max_ratio` null means no target. A missing row (e.g. WAL-E not installed) shows as
    "not measured" and is left out of the chart.

Output: the targets table is also printed to stdout. Errors (unreadable or malformed
input, README without markers) are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from xml.sax.saxutils import escape as xml_escape

README_START = "<!-- bench-results:start -->"
README_END = "<!-- bench-results:end -->"
RATIO_DEFINITION = (
    "wale / baseline is the ratio of median wall-clock times in the same run; "
    "below 1 means wale is faster."
)
MISSED_DEFINITION = (
    "Speed-up is baseline ÷ wale. \"missed by X\": wale / baseline was X times the "
    "largest ratio that meets the target."
)
TARGET_COLUMNS = ["measurement", "wale", "baseline", "wale / baseline", "speed-up", "target", "met"]
DASH = "—"


class ReportError(Exception):
    """A problem with the input or the arguments: reported in one line, exit status 2."""


# ---------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Row:
    section: str
    case: str
    tool: str
    median_s: float
    p90_s: float | None
    runs: int | None
    peak_rss_kb: float | None
    bytes: float | None
    note: str


@dataclass(frozen=True)
class Comparison:
    label: str
    section: str
    case: str
    subject: str
    baseline: str
    max_ratio: float | None
    target: str | None
    max_subject_s: float | None = None


@dataclass(frozen=True)
class Results:
    rows: list[Row]
    comparisons: list[Comparison]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(obj: dict[str, Any], key: str, where: str, kind: str, required: bool) -> Any:
    """Returns obj[key] checked against `kind` ("str", "number", "positive", "int");
    None when it is null or absent and not required."""
    value = obj.get(key)
    if value is None:
        if required:
            raise ReportError(f"{where}: missing \"{key}\"")
        return None
    ok = {
        "str": isinstance(value, str),
        "number": _is_number(value) and value >= 0,
        "positive": _is_number(value) and value > 0,
        "int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
    }[kind]
    if not ok:
        wanted = {"str": "a string", "number": "a number >= 0", "positive": "a number > 0",
                  "int": "an integer >= 0"}[kind]
        raise ReportError(f"{where}: \"{key}\" must be {wanted}, not {json.dumps(value)}")
    return value


def _list_of_objects(doc: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    items = doc.get(key, [])
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ReportError(f"{where}: \"{key}\" must be a list of objects")
    return items


def parse_row(obj: dict[str, Any], where: str) -> Row:
    return Row(
        section=_field(obj, "section", where, "str", True),
        case=_field(obj, "case", where, "str", True),
        tool=_field(obj, "tool", where, "str", True),
        median_s=float(_field(obj, "median_s", where, "positive", True)),
        p90_s=_field(obj, "p90_s", where, "number", False),
        runs=_field(obj, "runs", where, "int", False),
        peak_rss_kb=_field(obj, "peak_rss_kb", where, "number", False),
        bytes=_field(obj, "bytes", where, "number", False),
        note=_field(obj, "note", where, "str", False) or "",
    )


def parse_comparison(obj: dict[str, Any], where: str) -> Comparison:
    return Comparison(
        label=_field(obj, "label", where, "str", True),
        section=_field(obj, "section", where, "str", True),
        case=_field(obj, "case", where, "str", True),
        subject=_field(obj, "subject", where, "str", True),
        baseline=_field(obj, "baseline", where, "str", True),
        max_ratio=_field(obj, "max_ratio", where, "positive", False),
        target=_field(obj, "target", where, "str", False) or None,
        max_subject_s=_field(obj, "max_subject_s", where, "positive", False),
    )


def load_file(path: Path) -> Results:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ReportError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ReportError(f"{path}: not UTF-8: {e.reason} at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: top level must be an object with \"rows\" and \"comparisons\"")
    rows = [parse_row(o, f"{path}: rows[{i}]") for i, o in enumerate(_list_of_objects(doc, "rows", str(path)))]
    comparisons = [
        parse_comparison(o, f"{path}: comparisons[{i}]")
        for i, o in enumerate(_list_of_objects(doc, "comparisons", str(path)))
    ]
    return Results(rows, comparisons)


def load_results(results_dir: Path) -> Results:
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}: not a directory")
    files = sorted(results_dir.glob("*.json"))
    if not files:
        raise ReportError(f"{results_dir}: no *.json result files (did the benchmarks run?)")
    rows: list[Row] = []
    comparisons: list[Comparison] = []
    for path in files:
        loaded = load_file(path)
        rows += loaded.rows
        comparisons += loaded.comparisons
    if not rows:
        raise ReportError(f"{results_dir}: the result files hold no rows")
    return Results(rows, comparisons)


# ----------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Outcome:
    """A comparison with its two rows looked up (None when not measured)."""

    comparison: Comparison
    subject: Row | None
    baseline: Row | None

    @property
    def measured(self) -> bool:
        return self.subject is not None and self.baseline is not None

    @property
    def ratio(self) -> float | None:
        if self.subject is None or self.baseline is None:
            return None
        return self.subject.median_s / self.baseline.median_s

    @property
    def met(self) -> bool | None:
        """True/False against the target; None without a target or a measurement."""
        ratio, max_ratio = self.ratio, self.comparison.max_ratio
        if ratio is None or max_ratio is None:
            return None
        return ratio <= max_ratio and self.within_time_limit

    @property
    def within_time_limit(self) -> bool:
        """Whether the subject's median is within the comparison's absolute limit, if any."""
        limit = self.comparison.max_subject_s
        return limit is None or self.subject is None or self.subject.median_s <= limit

    @property
    def missing_tools(self) -> list[str]:
        c = self.comparison
        return [t for t, r in ((c.subject, self.subject), (c.baseline, self.baseline)) if r is None]


def index_rows(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    """(section, case, tool) -> row; the first wins when a tool appears twice in a case."""
    index: dict[tuple[str, str, str], Row] = {}
    for row in rows:
        key = (row.section, row.case, row.tool)
        if key in index:
            warn(f"\"{row.tool}\" appears twice in {row.section} / {row.case}; comparisons use the first")
            continue
        index[key] = row
    return index


def evaluate(results: Results) -> list[Outcome]:
    index = index_rows(results.rows)
    return [
        Outcome(c, index.get((c.section, c.case, c.subject)), index.get((c.section, c.case, c.baseline)))
        for c in results.comparisons
    ]


# ----------------------------------------------------------------------- formatting


def fmt_seconds(seconds: float) -> str:
    """300 µs, 4.21 ms, 13.6 ms, 214 ms, 2.31 s, 23.1 s, 1m 23s, 1h 02m."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 0.01:
        return f"{seconds * 1e3:.2f} ms"
    if seconds < 0.1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 100:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {total % 3600 // 60:02d}m"


def fmt_sig(value: float, digits: int = 3) -> str:
    """`digits` significant digits without exponent or trailing zeros: 0.0667, 0.79, 1.24, 152."""
    if value == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    if decimals <= 0:
        return f"{round(value, decimals):.0f}"
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def fmt_speedup(speedup: float) -> str:
    """14.9×, 152.3×, 1.26×, 0.81×, 0.043×."""
    if speedup >= 10:
        return f"{speedup:.1f}×"
    if speedup >= 0.1:
        return f"{speedup:.2f}×"
    return f"{fmt_sig(speedup, 2)}×"


def fmt_rate(mb_per_s: float) -> str:
    if mb_per_s >= 100:
        return f"{mb_per_s:.0f}"
    if mb_per_s >= 10:
        return f"{mb_per_s:.1f}"
    return f"{mb_per_s:.2f}"


def fmt_rss_mb(kib: float) -> str:
    """ru_maxrss is in KiB; the report uses MB (10^6 bytes), like MB/s."""
    return f"{kib * 1024 / 1e6:.1f}"


def md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\|", "|").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ordered_unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ------------------------------------------------------------------- targets table


def time_and_memory(row: Row | None) -> str:
    """The median time, with the peak RSS where the bench recorded it: `2.45 s, 14.4 MB peak`."""
    if row is None:
        return "not measured"
    if row.peak_rss_kb is None:
        return fmt_seconds(row.median_s)
    return f"{fmt_seconds(row.median_s)}, {fmt_rss_mb(row.peak_rss_kb)} MB peak"


def target_cells(outcome: Outcome) -> list[str]:
    c = outcome.comparison
    subject_time = time_and_memory(outcome.subject)
    wale = subject_time if c.subject == "wale" else f"{c.subject}: {subject_time}"
    baseline = f"{c.baseline}: {time_and_memory(outcome.baseline)}"
    max_ratio = c.max_ratio
    target = DASH if max_ratio is None else c.target or f"wale / baseline ≤ {fmt_sig(max_ratio)}"
    ratio = outcome.ratio
    if ratio is None:
        missing = " and ".join(outcome.missing_tools)
        return [c.label, wale, baseline, DASH, DASH, target, f"not measured ({missing} missing)"]
    if max_ratio is None:
        met = DASH
    elif ratio > max_ratio:
        met = f"**no** (missed by {fmt_sig(ratio / max_ratio)}×)"
    elif not outcome.within_time_limit:
        met = f"**no** (over {fmt_seconds(c.max_subject_s)})"
    else:
        met = "yes"
    return [c.label, wale, baseline, fmt_sig(ratio), fmt_speedup(1 / ratio), target, met]


def targets_table(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return "_No comparisons in the results._"
    return md_table(TARGET_COLUMNS, (target_cells(o) for o in outcomes))


# ------------------------------------------------------------------ section tables


def section_table(rows: list[Row]) -> str:
    with_bytes = any(r.bytes is not None for r in rows)
    with_rss = any(r.peak_rss_kb is not None for r in rows)
    with_note = any(r.note for r in rows)
    header = ["case", "tool", "median", "p90", "runs"]
    header += ["MB/s"] * with_bytes + ["peak RSS (MB)"] * with_rss + ["note"] * with_note
    lines: list[list[str]] = []
    for case in ordered_unique(r.case for r in rows):
        for i, row in enumerate(r for r in rows if r.case == case):
            cells = [
                case if i == 0 else "",
                row.tool,
                fmt_seconds(row.median_s),
                fmt_seconds(row.p90_s) if row.p90_s is not None else DASH,
                str(row.runs) if row.runs is not None else DASH,
            ]
            if with_bytes:
                cells.append(fmt_rate(row.bytes / 1e6 / row.median_s) if row.bytes is not None else "")
            if with_rss:
                cells.append(fmt_rss_mb(row.peak_rss_kb) if row.peak_rss_kb is not None else "")
            if with_note:
                cells.append(row.note)
            lines.append(cells)
    return md_table(header, lines)


def section_tables(rows: list[Row]) -> str:
    parts = []
    for section in ordered_unique(r.section for r in rows):
        parts.append(f"## {section}\n\n{section_table([r for r in rows if r.section == section])}")
    return "\n\n".join(parts)


# --------------------------------------------------------------------- run context


@dataclass(frozen=True)
class Context:
    date_utc: str
    commit: str
    mode: str | None
    elapsed_s: float | None
    cores: int | None
    cpu_model: str
    memory_gib: float | None
    kernel: str
    archive: str | None

    def machine(self) -> str:
        cores = f"{self.cores} cores" if self.cores else "unknown core count"
        memory = f"{self.memory_gib:.1f} GiB RAM" if self.memory_gib is not None else "unknown RAM"
        return f"{cores} ({self.cpu_model}), {memory}, {self.kernel}"

    def run(self) -> str:
        parts = [f"{self.mode} mode" if self.mode else None,
                 f"suite took {fmt_seconds(self.elapsed_s)}" if self.elapsed_s is not None else None]
        return ", ".join(p for p in parts if p)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def run_git(root: Path, *args: str) -> str | None:
    """stdout of `git args...` in root, or None when git is missing or fails."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit(root: Path, outputs: list[Path]) -> str:
    """Short HEAD, "-dirty" when the work tree has changes other than this script's outputs
    (rewriting the report must not make the next report dirty)."""
    head = run_git(root, "rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown (no git)"
    excludes = []
    for out in outputs:
        try:
            excludes.append(f":(exclude){out.resolve().relative_to(root)}")
        except ValueError:
            pass  # outside the repository
    status = run_git(root, "status", "--porcelain", "--", ".", *excludes)
    dirty = "-dirty" if status is None or status.strip() else ""
    return head.strip() + dirty


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return os.uname().machine or "unknown CPU"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024  # the kernel's "kB" is KiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a shell-sourceable file, quotes removed; comments and other lines ignored."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ReportError(f"{path}: cannot read archive meta: {e.strerror or e}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        try:
            values[key] = " ".join(shlex.split(value, comments=True))
        except ValueError:
            values[key] = value.strip()
    return values


def archive_description(meta: dict[str, str]) -> str | None:
    parts = []
    if meta.get("BACKUP_NAME"):
        parts.append(f"`{meta['BACKUP_NAME']}`")
    size = meta.get("EXPANDED_SIZE_BYTES")
    if size:
        parts.append(f"{int(size) / 1e9:.2f} GB expanded" if size.isdigit() else f"{size} bytes expanded")
    if meta.get("PARTITION_COUNT"):
        parts.append(f"{meta['PARTITION_COUNT']} tar partitions")
    if meta.get("WAL_SEGMENT_COUNT"):
        parts.append(f"{meta['WAL_SEGMENT_COUNT']} WAL segments")
    return ", ".join(parts) or None


def gather_context(args: argparse.Namespace, outputs: list[Path]) -> Context:
    archive = archive_description(read_env_file(args.archive_meta)) if args.archive_meta else None
    return Context(
        date_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commit=git_commit(repo_root(), outputs),
        mode=args.mode,
        elapsed_s=args.elapsed_seconds,
        cores=os.cpu_count(),
        cpu_model=cpu_model(),
        memory_gib=memory_gib(),
        kernel=f"{os.uname().sysname} {os.uname().release}",
        archive=archive,
    )


# ------------------------------------------------------------------------ Markdown


def context_block(ctx: Context) -> str:
    lines = [f"- **Date**: {ctx.date_utc}", f"- **Commit**: `{ctx.commit}`"]
    if ctx.run():
        lines.append(f"- **Run**: {ctx.run()}")
    lines.append(f"- **Machine**: {ctx.machine()}")
    if ctx.archive:
        lines.append(f"- **Archive**: {ctx.archive}")
    return "\n".join(lines)


def context_line(ctx: Context) -> str:
    """The one-line version for the README."""
    run = f", {ctx.run()}" if ctx.run() else ""
    archive = f"; archive {ctx.archive}" if ctx.archive else ""
    return f"Measured {ctx.date_utc} at commit `{ctx.commit}`{run}, on {ctx.machine()}{archive}."


def markdown_report(results: Results, outcomes: list[Outcome], ctx: Context) -> str:
    return "\n\n".join([
        "# wale benchmarks",
        context_block(ctx),
        "## Targets",
        targets_table(outcomes),
        MISSED_DEFINITION,
        section_tables(results.rows),
        RATIO_DEFINITION,
    ]) + "\n"


def readme_block(outcomes: list[Outcome], ctx: Context, svg_link: str, report_link: str) -> str:
    return "\n\n".join([
        context_line(ctx),
        targets_table(outcomes),
        f"![wale / baseline ratios]({svg_link})",
        f"Every measurement, and how the ratios are defined: [{report_link}]({report_link}).",
    ])


def replace_readme_block(text: str, block: str, path: Path) -> str:
    lines = text.splitlines(keepends=True)
    starts = [i for i, l in enumerate(lines) if l.strip() == README_START]
    ends = [i for i, l in enumerate(lines) if l.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ReportError(
            f"{path}: needs one line '{README_START}' followed by one line '{README_END}' "
            f"(found {len(starts)} start, {len(ends)} end)"
        )
    newline = "\r\n" if lines[starts[0]].endswith("\r\n") else "\n"
    inner = "\n" + block + "\n\n"
    return "".join(lines[: starts[0] + 1]) + inner.replace("\n", newline) + "".join(lines[ends[0]:])


# ----------------------------------------------------------------------------- SVG

SVG_WIDTH = 800
FONT_SIZE = 12
CHAR_W = 6.6  # rough mean advance of a 12 px sans-serif character, for layout only
ROW_H = 42
BAR_H = 14
COLOURS = {True: "#2e7d32", False: "#c62828", None: "#9e9e9e"}
TICK_STEPS = (1, 2, 5)


def text_width(text: str) -> float:
    return len(text) * CHAR_W


def plain(text: str) -> str:
    """Label text for the chart: Markdown code ticks dropped."""
    return text.replace("`", "")


def wrap(text: str, width_px: float, max_lines: int = 2) -> list[str]:
    """Words wrapped to width_px; the last line ends in … when it had to be cut."""
    max_chars = max(4, int(width_px / CHAR_W))
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if len(candidate) <= max_chars or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return [l if len(l) <= max_chars else l[: max_chars - 1].rstrip() + "…" for l in lines]


def axis_domain(values: list[float]) -> tuple[float, float]:
    """log10 bounds covering [0.01, 2] and every value with a 1.5× margin."""
    low = min([0.01] + [v / 1.5 for v in values])
    high = max([2.0] + [v * 1.5 for v in values])
    return math.log10(low), math.log10(high)


def axis_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for exp in range(math.floor(lo) - 1, math.ceil(hi) + 1):
        for step in TICK_STEPS:
            value = step * 10.0 ** exp
            if lo <= math.log10(value) + 1e-9 and math.log10(value) - 1e-9 <= hi:
                ticks.append(value)
    return ticks


def fmt_tick(value: float) -> str:
    return f"{value:.10f}".rstrip("0").rstrip(".")


def bar_value_text(ratio: float) -> str:
    if ratio < 1:
        return f"{fmt_sig(ratio)} ({fmt_speedup(1 / ratio)} faster)"
    if ratio > 1:
        return f"{fmt_sig(ratio)} (slower)"
    return "1 (same)"


class Svg:
    """Collects SVG elements; all text goes through xml_escape."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self, x: float, y: float, content: str, anchor: str = "start", **attrs: Any) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{xml_escape(str(v))}"' for k, v in attrs.items())
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{xml_escape(content)}</text>')

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1) -> None:
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                 f'stroke="{stroke}" stroke-width="{width}"/>')

    def diamond(self, x: float, y: float, r: float = 6) -> None:
        self.add(f'<polygon points="{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} '
                 f'{x - r:.1f},{y:.1f}" fill="#000" stroke="#fff" stroke-width="1"/>')

    def rect(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"/>')

    def render(self, width: int, height: float, title: str) -> str:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
            f'viewBox="0 0 {width} {height:.0f}" font-family="sans-serif" font-size="{FONT_SIZE}" '
            f'role="img" aria-label="{xml_escape(title, {chr(34): "&quot;"})}">\n'
            f'<title>{xml_escape(title)}</title>\n'
            f'<rect x="0" y="0" width="{width}" height="{height:.0f}" fill="#fff"/>\n'
            + "\n".join(self.parts) + "\n</svg>\n"
        )


@dataclass(frozen=True)
class Plot:
    """Horizontal geometry: log10 ratio -> x pixel."""

    x0: float
    x1: float
    lo: float
    hi: float

    def x(self, ratio: float) -> float:
        return self.x0 + (math.log10(ratio) - self.lo) / (self.hi - self.lo) * (self.x1 - self.x0)


def value_label_x(plot: Plot, ratio: float, text: str) -> tuple[float, str]:
    """Where the bar's value goes, on the line under the bar: from the bar's end along the
    bar; when the bar is shorter than the text, against the 1 line on the bar's side; when
    there is no room on that side either, from the bar's end across the 1 line."""
    end, one, width, gap = plot.x(ratio), plot.x(1), text_width(text), 6
    if ratio < 1:
        if end + width <= one - gap:
            return end, "start"
        if one - gap - width >= plot.x0:
            return one - gap, "end"
        return end, "start"
    if end - width >= one + gap:
        return end, "end"
    if one + gap + width <= SVG_WIDTH - gap:
        return one + gap, "start"
    return end, "end"


def bar_middle(row_top: float) -> float:
    return row_top + BAR_H / 2 + 4


def draw_bar(svg: Svg, plot: Plot, outcome: Outcome, top: float, label_w: float) -> None:
    c, ratio = outcome.comparison, outcome.ratio
    assert ratio is not None and outcome.subject and outcome.baseline
    mid = bar_middle(top)
    label_lines = wrap(plain(c.label), label_w)
    first = mid + 4 - (len(label_lines) - 1) * 7
    for i, line in enumerate(label_lines):
        svg.text(plot.x0 - 10, first + i * 14, line, "end", fill="#222")
    x_one, x_end = plot.x(1), plot.x(ratio)
    tooltip = (f"{plain(c.label)}: {c.subject} {fmt_seconds(outcome.subject.median_s)}, "
               f"{c.baseline} {fmt_seconds(outcome.baseline.median_s)}"
               + (f"; target {plain(c.target or '')} (ratio ≤ {fmt_sig(c.max_ratio)})" if c.max_ratio else ""))
    svg.add(f"<g><title>{xml_escape(tooltip)}</title>")
    svg.rect(min(x_one, x_end), mid - BAR_H / 2, max(abs(x_end - x_one), 1.5), BAR_H, COLOURS[outcome.met])
    svg.add("</g>")
    text = bar_value_text(ratio)
    x, anchor = value_label_x(plot, ratio, text)
    svg.text(x, mid + BAR_H / 2 + 13, text, anchor, fill="#222")


def draw_axis(svg: Svg, plot: Plot, top: float, bottom: float) -> None:
    for tick in axis_ticks(plot.lo, plot.hi):
        x = plot.x(tick)
        svg.line(x, top, x, bottom, "#e0e0e0")
        svg.line(x, bottom, x, bottom + 4, "#555")
        svg.text(x, bottom + 17, fmt_tick(tick), "middle", fill="#333")
    svg.line(plot.x0, bottom, plot.x1, bottom, "#555")
    x_one = plot.x(1)
    svg.text(x_one, top - 10, "1 = same as baseline", "middle", fill="#333")
    svg.text(x_one - 8, bottom + 33, "← wale faster", "end", fill="#555")
    svg.text(x_one + 8, bottom + 33, "wale slower →", "start", fill="#555")


def draw_one_line(svg: Svg, plot: Plot, top: float, bottom: float) -> None:
    """The "same as baseline" line, drawn over the bars."""
    svg.line(plot.x(1), top - 6, plot.x(1), bottom, "#333", 2)


def draw_legend(svg: Svg, x: float, y: float, not_shown: list[Outcome]) -> float:
    """Draws the legend from baseline y; returns the y below it."""
    svg.text(x, y, "Bar: wale ÷ baseline, median wall time, from 1 to the ratio "
                   "(log scale; left of 1 = wale faster).", fill="#333")
    y += 20
    cursor = x
    for colour, label in ((COLOURS[True], "target met"), (COLOURS[False], "target missed"),
                          (COLOURS[None], "no target")):
        svg.rect(cursor, y - 10, 14, 10, colour)
        svg.text(cursor + 19, y, label, fill="#333")
        cursor += 19 + text_width(label) + 18
    svg.diamond(cursor + 6, y - 5, 5)
    svg.text(cursor + 16, y, "target: largest ratio that meets it", fill="#333")
    if not_shown:
        names = "; ".join(f"{plain(o.comparison.label)} ({' and '.join(o.missing_tools)} missing)"
                          for o in not_shown)
        for line in wrap(f"Not measured, not shown: {names}", SVG_WIDTH - 2 * x, max_lines=3):
            y += 18
            svg.text(x, y, line, fill="#777")
    return y + 12


def svg_chart(outcomes: list[Outcome], ctx: Context) -> str:
    shown = [o for o in outcomes if o.measured]
    not_shown = [o for o in outcomes if not o.measured]
    mode = f", {ctx.mode}" if ctx.mode else ""
    cores = f"{ctx.cores} cores" if ctx.cores else "unknown cores"
    title = f"wale ÷ baseline, median wall time ({cores}{mode})"
    svg = Svg()
    svg.text(SVG_WIDTH / 2, 24, title, "middle", font_size=15, font_weight="bold", fill="#111")
    margin = 16
    labels = [plain(o.comparison.label) for o in shown]
    label_w = min(max([text_width(l) for l in labels] + [80]), 230)
    values = [o.ratio for o in shown if o.ratio] + [o.comparison.max_ratio for o in shown if o.comparison.max_ratio]
    lo, hi = axis_domain(values)
    plot = Plot(margin + label_w + 14, SVG_WIDTH - 70, lo, hi)  # room right of 1 for values
    top = 62
    if not shown:
        svg.text(SVG_WIDTH / 2, top + 20, "No comparison has both measurements.", "middle", fill="#777")
        bottom = top + 40
    else:
        bottom = top + len(shown) * ROW_H
        draw_axis(svg, plot, top, bottom)  # first, so that the bars cover the gridlines
        for i, outcome in enumerate(shown):
            draw_bar(svg, plot, outcome, top + i * ROW_H, label_w)
        draw_one_line(svg, plot, top, bottom)
        for i, outcome in enumerate(shown):  # targets on top of everything
            if outcome.comparison.max_ratio is not None:
                svg.diamond(plot.x(outcome.comparison.max_ratio), bar_middle(top + i * ROW_H))
    height = draw_legend(svg, margin, bottom + (62 if shown else 24), not_shown)
    return svg.render(SVG_WIDTH, height, title)


# ---------------------------------------------------------------------------- main


def warn(message: str) -> None:
    print(f"bench_report: warning: {message}", file=sys.stderr)


def write_text(path: Path, text: str) -> None:
    """Writes via a temporary file in the same directory, so a failure leaves the old file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8", newline="")
        tmp.replace(path)
    except OSError as e:
        raise ReportError(f"{path}: cannot write: {e.strerror or e}") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Merge wale benchmark JSON results into a report, a chart "
                                            "and the README summary.")
    p.add_argument("results_dir", type=Path, metavar="RESULTS_DIR", help="directory of *.json results")
    p.add_argument("--markdown", type=Path, required=True, help="Markdown report to write")
    p.add_argument("--svg", type=Path, required=True, help="SVG chart of the ratios to write")
    p.add_argument("--readme", type=Path, help=f"README whose {README_START} … {README_END} block is replaced")
    p.add_argument("--svg-link", default="benchmarks/ratios.svg", help="chart path as linked from the README")
    p.add_argument("--report-link", default="benchmarks/results.md", help="report path as linked from the README")
    p.add_argument("--archive-meta", type=Path, help="meta.env of the benchmark archive")
    p.add_argument("--mode", choices=["quick", "full"], help="how the suite was run")
    p.add_argument("--elapsed-seconds", type=float, help="wall time of the whole suite")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        results = load_results(args.results_dir)
        outcomes = evaluate(results)
        readme_text = None
        if args.readme:
            try:
                readme_text = args.readme.read_bytes().decode("utf-8")  # keeps CRLF as is
            except UnicodeDecodeError as e:
                raise ReportError(f"{args.readme}: not UTF-8: {e.reason} at byte {e.start}") from None
            except OSError as e:
                raise ReportError(f"{args.readme}: cannot read: {e.strerror or e}") from None
        outputs = [args.markdown, args.svg] + ([args.readme] if args.readme else [])
        ctx = gather_context(args, outputs)
        new_readme = None
        if readme_text is not None:
            block = readme_block(outcomes, ctx, args.svg_link, args.report_link)
            new_readme = replace_readme_block(readme_text, block, args.readme)
        write_text(args.markdown, markdown_report(results, outcomes, ctx))
        write_text(args.svg, svg_chart(outcomes, ctx))
        if new_readme is not None:
            write_text(args.readme, new_readme)
    except ReportError as e:
        print(f"bench_report: error: {e}", file=sys.stderr)
        return 2
    print(targets_table(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
