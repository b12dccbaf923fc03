#!/usr/bin/env python3
"""Rewrite CUDA kernel launches `kernel<T...><<<grid, block, smem, stream>>>(args)` into calls
`emu_launch(grid, block, smem, stream, kernel<T...>, "kernel<T...>", args)` of the CPU emulator
(fake_cuda/cuda_runtime.h), so that an unmodified .cu file compiles as C++. The string literal
is the kernel expression as written in the source (whitespace runs collapsed to one space): the
emulator's fault injection (EMU_FAULT_KERNEL, tests/emu/emu_api.cpp) matches launches by it.
Each static `__shared__` declaration is followed, on its line, by emu_shared_poison calls
(poison_shared): every block starts with those variables full of NaN.

Usage: cuda_launch_rewrite.py IN.cu OUT.cpp

Every other byte is copied unchanged, and each rewritten launch keeps its number of lines (the
missing newlines go before the statement's `;`), so that compiler messages and the `#line`
directive at the top point into the original file. Fails (exit 1) when a launch cannot be parsed
or none is found, rather than emit something that silently skips a kernel."""
import re
import sys

IDENT_CHARS = re.compile(r"[A-Za-z0-9_:]")


def match_back(text, close, open_ch, close_ch):
    """Index of the bracket opening the one at text[close], scanning backwards."""
    depth = 0
    for i in range(close, -1, -1):
        if text[i] == close_ch:
            depth += 1
        elif text[i] == open_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced %s%s" % (open_ch, close_ch))


def match_fwd(text, open_, open_ch, close_ch):
    depth = 0
    for i in range(open_, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced %s%s" % (open_ch, close_ch))


def c_string(s):
    """s as a C string literal (on one line: s has no newline)"""
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def rewrite(text):
    out, pos, count = [], 0, 0
    while True:
        lt = text.find("<<<", pos)
        if lt < 0:
            break
        # the kernel expression: an identifier, optionally followed by <template arguments>
        end = lt
        while end > 0 and text[end - 1].isspace():
            end -= 1
        start = end
        if text[start - 1] == ">":
            start = match_back(text, start - 1, "<", ">")
        while start > 0 and IDENT_CHARS.match(text[start - 1]):
            start -= 1
        kernel = text[start:end]
        if not re.match(r"[A-Za-z_]", kernel):
            raise ValueError("no kernel name before <<< at offset %d" % lt)
        gt = text.find(">>>", lt)
        if gt < 0:
            raise ValueError("<<< without >>> at offset %d" % lt)
        config = text[lt + 3:gt].strip()
        paren = gt + 3
        while text[paren].isspace():
            paren += 1
        if text[paren] != "(":
            raise ValueError("no argument list after >>> at offset %d" % gt)
        close = match_fwd(text, paren, "(", ")")
        args = text[paren + 1:close].strip()
        call = "emu_launch(%s, %s, %s%s)" % (config, kernel, c_string(" ".join(kernel.split())),
                                               ", " + args if args else "")
        call += "\n" * max(0, text.count("\n", start, close + 1) - call.count("\n"))
        out.append(text[pos:start])
        out.append(call)
        pos = close + 1
        count += 1
    out.append(text[pos:])
    return "".join(out), count


SHARED_DECL = re.compile(r"^([ \t]*)__shared__\b([^;\n{}]*);", re.MULTILINE)


def shared_names(decl):
    """The names declared by the text between `__shared__` and `;`: `__align__(16) float a[N],
    b[M]` gives a and b."""
    names, depth, piece = [], 0, ""
    for ch in decl + ",":
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            head = piece.split("[", 1)[0]
            m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", head)
            if not m:
                raise ValueError("no name in the __shared__ declaration '%s'" % decl.strip())
            names.append(m.group(1))
            piece = ""
        else:
            piece += ch
    return names


def poison_shared(text):
    """After each (static) `__shared__` declaration, on the same line, a call that fills the
    variables with 0xff bytes (NaN floats, -1 ints) once per block: the emulator keeps them as
    C++ statics, which would otherwise carry one block's values into the next, so a read of
    shared memory that no thread of the block wrote shows (as on a GPU, where it holds whatever
    the SM's last kernel left). `extern __shared__` (dynamic) memory is filled by the emulator."""
    count = 0

    def sub(m):
        nonlocal count
        count += 1
        calls = " ".join("emu_shared_poison(&%s, sizeof %s);" % (n, n)
                         for n in shared_names(m.group(2)))
        return m.group(0) + " " + calls

    return SHARED_DECL.sub(sub, text), count


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: cuda_launch_rewrite.py IN.cu OUT.cpp")
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    try:
        body, count = rewrite(text)
        body, shared = poison_shared(body)
    except (ValueError, IndexError) as e:
        sys.exit("cuda_launch_rewrite.py: %s: %s" % (src, e))
    if count == 0:
        sys.exit("cuda_launch_rewrite.py: %s: no kernel launch found" % src)
    name = src.replace("\\", "/").rsplit("/", 1)[-1]
    header = ("/* generated by tests/emu/cuda_launch_rewrite.py from %s: %d launches, %d shared"
              " declarations */\n" % (name, count, shared))
    with open(dst, "w", encoding="utf-8") as f:
        f.write(header + '#line 1 "%s"\n' % src + body)


if __name__ == "__main__":
    main()
