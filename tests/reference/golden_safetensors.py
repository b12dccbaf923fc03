#!/usr/bin/env python3
"""Writes small safetensors files with the reference implementation (huggingface/safetensors,
`pip install safetensors numpy`) into tests/reference/st/. tests/test_safetensors.c rebuilds the
same tensors from the same formulas, checks that the C writer produces identical bytes and that
the C reader reads every value back. The outputs are committed; rerun to regenerate:

    python3 tests/reference/golden_safetensors.py

Value formulas (element k of a tensor, k in C order), mirrored in the C test:
- float dtypes (F16, BF16, F32, F64): (k - 3) * 0.375, exact in every one of them
- integer dtypes of B bits: (k * 2654435761) mod 2^B, read as two's complement when signed
- BOOL: k % 3 == 0
- F8_E4M3 / F8_E5M2: the byte (k * 37 + 1) mod 256 (raw bits)
"""
import os
import sys

import numpy as np
import safetensors

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "st")

INT_BITS = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32,
            "int64": 64, "uint64": 64}


def values(dtype, shape):
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    k = np.arange(n, dtype=np.uint64)
    if dtype in ("float16", "float32", "float64"):
        v = (np.arange(n, dtype=np.float64) - 3) * 0.375
        return v.astype(dtype).reshape(shape).tobytes()
    if dtype == "bfloat16":
        # (k - 3) * 0.375 is exact in bfloat16: its bits are the top half of the float32's
        f = ((np.arange(n, dtype=np.float64) - 3) * 0.375).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    if dtype in INT_BITS:
        b = INT_BITS[dtype]
        with np.errstate(over="ignore"):
            u = (k * np.uint64(2654435761))
        if b < 64:
            u = u & np.uint64((1 << b) - 1)
        return u.astype("uint%d" % b).view(dtype).tobytes()
    if dtype == "bool":
        return (np.arange(n) % 3 == 0).astype(np.bool_).tobytes()
    if dtype in ("float8_e4m3fn", "float8_e5m2"):
        return ((np.arange(n) * 37 + 1) % 256).astype(np.uint8).tobytes()
    raise ValueError(dtype)


def save(name, specs, metadata=None):
    """specs: {tensor name: (dtype as the Python binding names it, shape)}"""
    keep = []
    tensors = {}
    for tname, (dtype, shape) in specs.items():
        buf = np.frombuffer(values(dtype, shape), dtype=np.uint8).copy()
        keep.append(buf)
        if hasattr(safetensors, "TensorSpec"):  # safetensors >= 0.7
            tensors[tname] = safetensors.TensorSpec(dtype=dtype, shape=list(shape),
                                                    data_ptr=buf.ctypes.data, data_len=buf.nbytes)
        else:
            tensors[tname] = {"dtype": dtype, "shape": list(shape), "data": buf.tobytes()}
    path = os.path.join(OUT, name)
    safetensors.serialize_file(tensors, path, metadata=metadata)
    print("wrote", path, os.path.getsize(path), "bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    # FORMATS.md's goldens
    save("empty.safetensors", {})
    save("attn.safetensors", {"attn.0": ("float32", (1, 2, 3))})
    # every common dtype, a scalar, zero-size tensors, names that sort bytewise, one metadata key
    # whose value needs JSON escapes and non-ASCII text
    save("mixed.safetensors", {
        "f64": ("float64", (2, 3)),
        "f32.b": ("float32", (4,)),
        "f32.a": ("float32", (2, 2)),
        "F32.upper": ("float32", (1,)),
        "f32.a.10": ("float32", ()),          # scalar
        "f32.a.2": ("float32", (0, 3)),       # zero-size
        "bf16": ("bfloat16", (3,)),
        "f16": ("float16", (2, 2, 2)),
        "i64": ("int64", (3,)),
        "u64": ("uint64", (2,)),
        "i32": ("int32", (5,)),
        "u32": ("uint32", (2,)),
        "i16": ("int16", (3,)),
        "u16": ("uint16", (3,)),
        "i8": ("int8", (7,)),
        "u8": ("uint8", (1, 5)),
        "bool": ("bool", (6,)),
        "f8_e4m3": ("float8_e4m3fn", (3,)),
        "f8_e5m2": ("float8_e5m2", (2,)),
        "zero.u8": ("uint8", (0,)),
        "caf\u00e9": ("float32", (2,)),
    }, metadata={"note": "quote \" backslash \\ newline \n tab \t ctrl \x01 caf\u00e9 \u2603 /"})
    # several metadata keys: the reference writes them in hash order (random per run), so the C
    # test checks the values and reproduces the bytes in the order it read them
    save("meta.safetensors", {"w": ("float32", (2, 3)), "b": ("float32", (3,))},
         metadata={"format": "pt", "model": '{"channels": 16, "T": 100}', "step": "1200",
                   "empty": ""})


if __name__ == "__main__":
    sys.exit(main())
