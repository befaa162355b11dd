#!/usr/bin/env python3
"""Symbolizes a memtrace dump (see memtrace.c): each group of live allocations with the first frames of its
call stack inside the binary, demangled (addr2line, swift-demangle).

    python3 scripts/memtrace/memtrace.py DUMP BINARY [--frames 4]
"""
import argparse
import re
import shutil
import subprocess


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("binary")
    ap.add_argument("--frames", type=int, default=4)
    a = ap.parse_args()
    text = open(a.dump).read()
    name = re.escape(a.binary.rsplit("/", 1)[-1])
    frame = re.compile(name + r"\(\+(0x[0-9a-f]+)\)")
    offsets = sorted(set(frame.findall(text)))
    lines = subprocess.run(["addr2line", "-f", "-e", a.binary] + offsets, capture_output=True, text=True).stdout.split("\n")
    names = [lines[2 * i] for i in range(len(offsets))]
    demangle = shutil.which("swift-demangle") or "/opt/swift/usr/bin/swift-demangle"
    names = subprocess.run([demangle, "--simplified", "--compact"], input="\n".join(names),
                           capture_output=True, text=True).stdout.split("\n")
    symbol = dict(zip(offsets, names))
    print(text.split("\n", 1)[0])
    groups = []
    for block in text.split("== ")[1:]:
        head, *stack = block.split("\n")
        kib = int(head.split()[0])
        frames = []
        for line in stack:
            m = frame.search(line)
            if m:
                s = symbol.get(m.group(1), m.group(1))
                if not any(x in s for x in ("allocating_init", "partial apply", "@objc", "thunk")):
                    frames.append(s[:100])
            elif "libfuse" in line or "libcurl" in line:
                frames.append(line.rsplit("/", 1)[-1].split("(")[0])
        groups.append((kib, head, frames))
    for kib, head, frames in sorted(groups, key=lambda g: -g[0]):
        print(f"{head:<22} " + " < ".join(frames[:a.frames]))


if __name__ == "__main__":
    main()
