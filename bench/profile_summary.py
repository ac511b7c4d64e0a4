"""Summarise a py-spy raw profile (``--format raw``: one ``frame;frame;... count`` per line).

    python -m bench.profile_summary bench/results/profile-....txt [--top 25]

Prints, as shares of all samples: samples per thread, the top functions by
self time (leaf frame) and by inclusive time (anywhere on the stack), and
self time grouped by component (aioquic, Twisted, sqlite3, runtara, ...).
py-spy records only threads that are running (not ones waiting in epoll or
in a blocking system call such as fsync) unless ``--idle`` was given.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

COMPONENTS = (
    ("aioquic C crypto", ("aioquic/_crypto", "aioquic/_buffer")),
    ("aioquic", ("aioquic/",)),
    ("sqlite3 (driver + SQLite)", ("sqlite3/",)),
    ("psycopg2/txpostgres", ("psycopg2/", "txpostgres/")),
    ("runtara persistence", ("runtara/persistence/",)),
    ("runtara quic adapter", ("runtara/quic/",)),
    ("runtara rpc/dispatch/ops", ("runtara/",)),
    (
        "twisted adbapi/threads",
        (
            "twisted/enterprise/",
            "twisted/python/threadpool",
            "threading.py",
            "twisted/_threads/",
            "queue.py",
            "twisted/python/context",
        ),
    ),
    ("twisted udp", ("twisted/internet/udp",)),
    ("twisted logger", ("twisted/logger/",)),
    ("twisted defer", ("twisted/internet/defer",)),
    ("twisted reactor", ("twisted/internet/",)),
    ("msgpack", ("msgpack/",)),
    ("cryptography", ("cryptography/",)),
)


def _parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match.group("function"), match.group("file")


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# Leaf frames that say what a thread is waiting for (native frames with
# --profile-native; ``doPoll`` alone when only Python frames were recorded).
WAITS = (
    ("fsync/fdatasync (disk flush)", ("fdatasync", "fsync")),
    ("idle in epoll_wait", ("epoll_wait", "EPollReactor.doPoll")),
    ("waiting for the GIL", ("pthread_cond_timedwait", "take_gil")),
    ("sendto (UDP send syscall)", ("sendto",)),
    ("recvfrom (UDP receive syscall)", ("recvfrom",)),
    ("socket I/O with PostgreSQL", ("__libc_recv", "__libc_send", "poll ")),
)


def waiting_for(stack: list[tuple[str, str]]) -> str | None:
    """What the stack's thread is blocked in, judged from its last frames."""
    tail = [function for function, _ in stack[-3:]]
    for name, markers in WAITS:
        if any(function.startswith(marker) for function in tail[-1:] for marker in markers):
            return name
        if name == "waiting for the GIL" and any(
            function.startswith(marker) for function in tail for marker in markers
        ):
            return name
    return None


def component(path: str) -> str:
    for name, markers in COMPONENTS:
        if any(marker in path for marker in markers):
            return name
    return "other (stdlib, interpreter)"


def summarise(path: Path, top: int = 20) -> dict:
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    components: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in path.read_text("utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "all threads"
        if frames and frames[0].startswith("thread ("):
            thread = frames[0].split(": ", 1)[-1].rstrip(")")
            thread = "MainThread (reactor)" if "MainThread" in thread else thread
            thread = "database pool thread" if "PoolThread" in thread else thread
            threads[thread] += count
            frames = frames[1:]
        if not frames:
            continue
        total += count
        parsed = [_parse_frame(frame) for frame in frames]
        function, file = parsed[-1]
        leaf[f"{function} ({_short(file)})"] += count
        # For native stacks, attribute C frames to the nearest Python frame's file.
        python_files = [p for _, p in parsed if p.endswith(".py")]
        where = waiting_for(parsed) or component(python_files[-1] if python_files else file)
        components[where] += count
        per_thread[thread][where] += count
        for name in {f"{f} ({_short(p)})" for f, p in parsed}:
            inclusive[name] += count

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(key, 100 * value / max(total, 1)) for key, value in counter.most_common(top)]

    breakdown = {
        thread: [
            (name, 100 * value / max(sum(counter.values()), 1))
            for name, value in counter.most_common(top)
        ]
        for thread, counter in per_thread.items()
    }
    return {
        "samples": total,
        "per_thread": breakdown,
        "threads": share(threads),
        "self": share(leaf),
        "inclusive": share(inclusive),
        "components": share(components),
    }


def render(summary: dict) -> str:
    lines = [f"samples: {summary['samples']}"]
    for thread, rows in summary["per_thread"].items():
        lines.append(f"\n{thread}, by what it was doing (% of its samples):")
        lines.extend(f"  {pct:5.1f}%  {name}" for name, pct in rows)
    for title, key in (
        ("threads", "threads"),
        ("all samples by component", "components"),
        ("top functions by self time", "self"),
        ("top functions by inclusive time", "inclusive"),
    ):
        lines.append(f"\n{title}:")
        lines.extend(f"  {pct:5.1f}%  {name}" for name, pct in summary[key])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    print(render(summarise(args.profile, args.top)))


if __name__ == "__main__":
    main()
