#!/usr/bin/env python3
"""Reference tensors for tests/test_models_reference.c: the models of models.py, built with fixed
seeds, run forward and backward in PyTorch (in float64, from float32 weights and inputs), written
to tests/reference/models/CASE.safetensors. The files are committed; to regenerate them all:

    /usr/bin/python3 tests/reference/make_reference.py

(Debian's python3-torch; no other package.) One file per case holds:
  NAME            every state_dict entry (F32) under the name the C builder registers, the
                  sinusoidal "table" buffer included
  io/x            input (N, C, H, W) F32 (2-D denoiser: (N, 2, 1, 1))
  io/t            timesteps 1..T (N) I32 (not for lenet)
  io/labels       class labels (N) I32: conditional models (K = generic) and lenet's targets
  io/target       the fixed target of the MSE loss (shape of io/out)
  io/out          the model's output (lenet: logits (N, K, 1, 1))
  io/features     lenet only: the 84 features (N, 84, 1, 1)
  io/loss         (1): mean squared error against io/target, or lenet's mean cross-entropy
  grad/NAME       d loss / d NAME for every trainable parameter
and in __metadata__: "config" (the C side's JSON, dd_model_config_from_json), "seed", "torch".
Names holding '/' are not parameters (the C checkpoint convention for EMA/Adam state), so the file
is also a checkpoint of the model.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as M  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

UNET = {"kind": "unet", "in_channels": 1, "height": 28, "width": 28, "model_channels": 16,
        "multipliers": [1, 2, 4], "attention": True, "groups": 8, "heads": 4, "timesteps": 100}

# (case name, config as the C side writes it, batch, seed). UNetConditioned uses 8 model
# channels (not 16) to keep the committed files small; the small sum variant covers L = 2,
# one group, three input channels and a non-square, non-28 size.
CASES = [
    ("unet", UNET, 4, 1),
    ("unet_noattn", dict(UNET, attention=False), 4, 2),
    ("unet_cond", dict(UNET, kind="unet-cond", model_channels=8, classes=10, combine="concat"), 4, 3),
    ("unet_cond_sum", {"kind": "unet-cond", "in_channels": 3, "height": 12, "width": 8,
                       "model_channels": 4, "multipliers": [1, 2], "attention": True, "groups": 1,
                       "heads": 2, "classes": 5, "combine": "sum", "timesteps": 30}, 3, 4),
    ("mlp2d", {"kind": "mlp2d", "in_channels": 2, "height": 1, "width": 1, "hidden": 16,
               "timesteps": 40}, 16, 5),
    ("mlp2d_cond", {"kind": "mlp2d-cond", "in_channels": 2, "height": 1, "width": 1, "hidden": 32,
                    "classes": 3, "timesteps": 40}, 16, 6),
    ("lenet", {"kind": "lenet", "in_channels": 1, "height": 28, "width": 28, "classes": 10}, 4, 7),
]


def perturb(m, g):
    """PyTorch initialises GroupNorm to scale 1, shift 0; move them off so that the test sees
    whether the C side applies and differentiates them (and in the right channel order)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".norm." in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))


def make(name, cfg, N, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    m = M.from_config(cfg)
    perturb(m, g)
    kind = cfg["kind"]
    C, H, W = cfg["in_channels"], cfg["height"], cfg["width"]
    io = {}
    x = torch.randn(N, C, H, W, generator=g)
    if kind == "lenet":
        x = torch.rand(N, C, H, W, generator=g)  # classifier inputs are in [0, 1]
    io["io/x"] = x
    cond = kind in ("unet-cond", "mlp2d-cond")
    T = cfg.get("timesteps", 0)
    if kind != "lenet":
        t = torch.randint(1, T + 1, (N,), generator=g)
        t[0], t[-1] = 1, T  # both ends of the table
        io["io/t"] = t.to(torch.int32)
    if cond:
        K = cfg["classes"]
        lab = torch.randint(0, K, (N,), generator=g)
        lab[-1] = K  # the generic label
        io["io/labels"] = lab.to(torch.int32)
    if kind == "lenet":
        io["io/labels"] = torch.randint(0, cfg["classes"], (N,), generator=g).to(torch.int32)

    md = m.double()
    xd = x.double()
    if kind == "lenet":
        feats = md.features(xd)
        out = md.fc3(feats)
        loss = F.cross_entropy(out, io["io/labels"].long())
        io["io/features"] = feats.detach().float().reshape(N, -1, 1, 1)
        io["io/out"] = out.detach().float().reshape(N, -1, 1, 1)
    else:
        labels = io["io/labels"].long() if cond else None
        out = md(xd, io["io/t"].long(), labels).reshape(N, C, H, W)
        target = torch.randn(N, C, H, W, generator=g)
        loss = F.mse_loss(out, target.double())
        io["io/target"] = target
        io["io/out"] = out.detach().float()
    loss.backward()
    io["io/loss"] = loss.detach().float().reshape(1)

    tensors = {k: v.detach().float() for k, v in md.state_dict().items()}
    for k, p in md.named_parameters():
        tensors["grad/" + k] = p.grad.detach().float()
    tensors.update(io)
    meta = {"config": json.dumps(cfg, separators=(",", ":")), "seed": str(seed),
            "torch": torch.__version__, "loss": repr(loss.item())}
    path = os.path.join(OUT, name + ".safetensors")
    M.save_safetensors(path, tensors, meta)
    print("%-14s %8d parameters  loss %.6f  %7.1f kB  %s" % (
        name, M.count_parameters(m), loss.item(), os.path.getsize(path) / 1024, path))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    for case in CASES:
        make(*case)


if __name__ == "__main__":
    main()
