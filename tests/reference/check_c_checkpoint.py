#!/usr/bin/env python3
"""The other direction of tests/test_models_reference.c: load checkpoints written by the C side
into the PyTorch modules of models.py and check that PyTorch computes the C side's outputs.

    /usr/bin/python3 tests/reference/check_c_checkpoint.py BUILD_DIR/models_c_*.safetensors

Each checkpoint (written by dd_checkpoint_save) holds the model's parameters under their
state_dict names, EMA and Adam state under names with '/' (dropped here, as any PyTorch user of
these checkpoints does), and the config JSON in the metadata key "config". Beside it,
models_io_CASE.safetensors holds the inputs io/x, io/t, io/labels and the C outputs io/out
(io/features for lenet). Loading is strict: every name and shape must match the module's
state_dict. Outputs must agree within 1e-4 relative (norm of the difference over norm of the C
output).
Exit 0 when every file passes, 1 otherwise, 77 when torch cannot be imported (CTest: skipped).
With --build DIR instead of files, checks every DIR/models_c_*.safetensors.
"""
import glob
import json
import os
import sys

try:
    import torch
except ImportError:
    print("torch is not importable: skipped")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as M  # noqa: E402

TOL = 1e-4


def rel(a, b):
    d = (a.double() - b.double()).norm().item()
    n = b.double().norm().item()
    return d / n if n > 0 else d


def check(path):
    ckpt, meta = M.load_safetensors(path)
    d, b = os.path.split(path)
    tensors, _ = M.load_safetensors(os.path.join(d, b.replace("models_c_", "models_io_", 1)))
    cfg = json.loads(meta["config"])
    m = M.from_config(cfg)
    state = {k: v for k, v in ckpt.items() if "/" not in k}
    dropped = len(ckpt) - len(state)
    m.load_state_dict(state, strict=True)  # raises on any missing, extra or misshapen name
    m = m.double().eval()
    x = tensors["io/x"].double()
    with torch.no_grad():
        if cfg["kind"] == "lenet":
            f = m.features(x)
            out = m.fc3(f)
            errs = {"features": rel(f.reshape(tensors["io/features"].shape), tensors["io/features"])}
        else:
            t = tensors["io/t"].long()
            labels = tensors["io/labels"].long() if "io/labels" in tensors else None
            out = m(x, t, labels)
            errs = {}
        errs["output"] = rel(out.reshape(tensors["io/out"].shape), tensors["io/out"])
    ok = all(e <= TOL for e in errs.values())
    print("%-34s %-10s %7d params (%d state tensors dropped)  %s  %s" % (
        os.path.basename(path), cfg["kind"], M.count_parameters(m), dropped,
        "  ".join("%s rel %.2e" % kv for kv in errs.items()), "ok" if ok else "FAIL"))
    return ok


def main(argv):
    files = argv[1:]
    if len(files) == 2 and files[0] == "--build":
        files = sorted(glob.glob(os.path.join(files[1], "models_c_*.safetensors")))
    if not files:
        print("no C checkpoints given (run test_models_reference first)")
        return 1
    ok = True
    for p in files:
        try:
            ok = check(p) and ok
        except Exception as e:  # a strict-load mismatch is a failure with its message
            print("%s: FAIL: %s: %s" % (os.path.basename(p), type(e).__name__, e))
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
