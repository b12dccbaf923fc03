#!/usr/bin/env python3
"""Compare two outputs of the diffusion program, for the shell tests that run it on two devices
(tests/gpu_cli.sh, tests/emu/cli_emu.sh). Prints one number (or a word saying why there is
none), which the caller checks against its tolerance.

  cmp_outputs.py raw A.raw B.raw          max |a - b| / max(1, |b|) over two DDRAW1 files
                                          (a 24-byte header, then float32)
  cmp_outputs.py hist A.csv B.csv         max |a - b| / max(1e-3, |b|) over the loss column of
                                          two history.csv files, whose rows must match
"""
import struct
import sys


def load_raw(path):
    data = open(path, "rb").read()
    if data[:6] != b"DDRAW1":
        raise ValueError("%s is not a DDRAW1 file" % path)
    n = (len(data) - 24) // 4
    return data[6:24], struct.unpack("<%df" % n, data[24:24 + 4 * n])


def load_hist(path):
    rows = [line.strip().split(",") for line in open(path)][1:]
    return [(r[0], r[1], r[2]) for r in rows], [float(r[3]) for r in rows]


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("raw", "hist"):
        print("usage: cmp_outputs.py raw|hist A B", file=sys.stderr)
        return 2
    kind, a_path, b_path = sys.argv[1:]
    try:
        ka, a = (load_raw if kind == "raw" else load_hist)(a_path)
        kb, b = (load_raw if kind == "raw" else load_hist)(b_path)
    except (OSError, ValueError, IndexError, struct.error):
        print("unreadable")
        return 0
    if ka != kb or len(a) != len(b) or not a:
        print("shape-mismatch" if kind == "raw" else "rows-differ")
        return 0
    floor = 1.0 if kind == "raw" else 1e-3
    print(max(abs(x - y) / max(floor, abs(y)) for x, y in zip(a, b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
