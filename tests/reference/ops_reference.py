#!/usr/bin/python3
"""Reference values for the CPU backend's op tests (tests/test_ops_forward.c), from PyTorch.

Regenerate (needs Debian's python3-torch; the tests themselves never need torch):

    /usr/bin/python3 tests/reference/ops_reference.py

Writes one small text file per case under tests/reference/ops/. Each file holds the case's
parameters, its inputs (generated here, so the C side need not reproduce torch's RNG), the
outputs torch computes from them, and for some cases r and the gradients of L = sum(y * r).

The maths runs in float64 on inputs that are exactly float32 values, and the results are rounded
to float32 once: the reference is then as exact as float32 can hold, and the C test's 1e-5 bound
measures only the C code's own float32 rounding.

File format (plain text, whitespace separated, '#' starts a comment line):
    param NAME VALUE
    tensor NAME NDIM D0 D1 ...
    V0 V1 ... (prod(D) values, %.9g, enough to round-trip float32)
"""
import math
import os

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops")
gen = torch.Generator().manual_seed(20240611)


def randn(*shape, scale=1.0):
    """float32 normal values, returned as float64 holding exactly those values"""
    return (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).double()


def uniform(lo, hi, *shape):
    return (torch.rand(*shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo).double()


def write(name, params, tensors):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name + ".txt")
    with open(path, "w") as f:
        f.write("# %s: written by tests/reference/ops_reference.py (torch %s); do not edit\n"
                % (name, torch.__version__.split("+")[0]))
        for k, v in params.items():
            f.write("param %s %s\n" % (k, repr(v)))
        for k, t in tensors.items():
            t = t.detach().to(torch.float32)
            f.write("tensor %s %d %s\n" % (k, t.dim(), " ".join(str(d) for d in t.shape)))
            vals = t.reshape(-1).tolist()
            for i in range(0, len(vals), 8):
                f.write(" ".join("%.9g" % v for v in vals[i:i + 8]) + "\n")
    print("wrote", os.path.relpath(path))


def grads_of(y, inputs):
    """r (fixed random, like y) and d sum(y * r) / d inputs"""
    r = randn(*y.shape)
    gs = torch.autograd.grad((y * r).sum(), inputs)
    return r, gs


def conv(name, N, Cin, H, W, Cout, K, stride, pad, bias=True):
    x = randn(N, Cin, H, W).requires_grad_()
    w = randn(Cout, Cin, K, K, scale=1.0 / math.sqrt(Cin * K * K)).requires_grad_()
    b = randn(Cout).requires_grad_() if bias else None
    y = F.conv2d(x, w, b, stride=stride, padding=pad)
    ins = [x, w] + ([b] if bias else [])
    r, gs = grads_of(y, ins)
    t = {"x": x, "w": w}
    if bias:
        t["b"] = b
    t["y"] = y
    t["r"] = r
    t["dx"], t["dw"] = gs[0], gs[1]
    if bias:
        t["db"] = gs[2]
    write(name, {"N": N, "Cin": Cin, "H": H, "W": W, "Cout": Cout, "K": K, "stride": stride,
                 "pad": pad, "bias": int(bias)}, t)


def group_norm(name, N, C, H, W, G, add, swish, eps=1e-5):
    x = (randn(N, C, H, W) * 1.5 + randn(1, C, 1, 1)).requires_grad_()
    gamma = uniform(0.5, 1.5, C).requires_grad_()
    beta = uniform(-0.5, 0.5, C).requires_grad_()
    a = randn(N, C, scale=0.5).requires_grad_() if add else None
    z = F.group_norm(x, G, gamma, beta, eps)
    if add:
        z = z + a[:, :, None, None]
    y = F.silu(z) if swish else z
    var, mean = torch.var_mean(x.detach().reshape(N, G, -1), dim=2, unbiased=False)
    rstd = 1.0 / torch.sqrt(var + eps)
    ins = [x, gamma, beta] + ([a] if add else [])
    r, gs = grads_of(y, ins)
    t = {"x": x, "gamma": gamma, "beta": beta}
    if add:
        t["add"] = a
    t.update({"y": y, "mean": mean, "rstd": rstd, "r": r, "dx": gs[0], "dgamma": gs[1],
              "dbeta": gs[2]})
    if add:
        t["dadd"] = gs[3]
    write(name, {"N": N, "C": C, "HW": H * W, "G": G, "add": int(add), "swish": int(swish),
                 "eps": eps}, t)


def attention(name, N, C, heads, P):
    """The attention core as backend.h defines it, written with torch's own attention maths
    (F.scaled_dot_product_attention is not in torch 1.13's stable API, so softmax(QK^T/sqrt D)V
    is spelled out) on the (N, heads, P, D) views of the qkv channels."""
    D = C // heads
    qkv = randn(N, 3 * C, P, scale=1.5).requires_grad_()
    q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
    # (N, C, P) -> (N, heads, P, D)
    q, k, v = [u.reshape(N, heads, D, P).transpose(2, 3) for u in (q, k, v)]
    probs = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(D), dim=-1)  # (N, heads, P, P)
    o = probs @ v  # (N, heads, P, D)
    y = o.transpose(2, 3).reshape(N, C, P)
    r, gs = grads_of(y, [qkv])
    write(name, {"N": N, "C": C, "heads": heads, "P": P},
          {"qkv": qkv, "y": y, "probs": probs, "r": r, "dqkv": gs[0]})


def activations():
    x = torch.cat([torch.linspace(-8, 8, 161, dtype=torch.float32).double(), randn(96, scale=3.0)])
    write("act", {"n": x.numel()},
          {"x": x, "relu": F.relu(x), "swish": F.silu(x),
           "gelu_tanh": F.gelu(x, approximate="tanh"), "gelu_erf": F.gelu(x)})


def misc():
    x = randn(4, 7)
    w = randn(5, 7, scale=0.4)
    b = randn(5)
    write("dense", {"N": 4, "Cin": 7, "Cout": 5}, {"x": x, "w": w, "b": b, "y": F.linear(x, w, b)})
    x = randn(2, 3, 5, 7)
    write("pool_up", {"N": 2, "C": 3, "H": 5, "W": 7},
          {"x": x, "maxpool": F.max_pool2d(x, 2), "upsample": F.interpolate(x, scale_factor=2,
                                                                              mode="nearest")})
    logits = randn(6, 10, scale=2.0)
    labels = torch.tensor([3, 0, 9, 3, 5, 1])
    pred, target = randn(3, 11), randn(3, 11)
    write("loss", {"N": 6, "K": 10},
          {"logits": logits, "labels": labels.double(),
           "xent": F.cross_entropy(logits, labels).reshape(1),
           "probs": torch.softmax(logits, dim=1), "pred": pred, "target": target,
           "mse": F.mse_loss(pred, target).reshape(1)})


def main():
    torch.set_grad_enabled(True)
    conv("conv_k3_s1_p1", 2, 3, 6, 5, 4, 3, 1, 1)
    conv("conv_k4_s2_p1", 2, 3, 8, 7, 5, 4, 2, 1)
    conv("conv_k5_s1_p2_nobias", 1, 2, 5, 5, 3, 5, 1, 2, bias=False)
    conv("conv_k1_s1_p0", 3, 4, 3, 3, 2, 1, 1, 0)
    conv("conv_k3_s2_p0", 2, 2, 7, 7, 3, 3, 2, 0)
    conv("conv_k3_s1_p1_1x1", 2, 5, 1, 1, 3, 3, 1, 1)
    group_norm("gn_add_swish", 2, 6, 4, 4, 3, True, True)
    group_norm("gn_plain", 2, 8, 3, 3, 4, False, False)
    group_norm("gn_g1_add_swish", 1, 6, 5, 5, 1, True, True)
    group_norm("gn_swish_odd", 3, 9, 2, 3, 3, False, True)
    attention("attn_h2", 2, 8, 2, 6)
    attention("attn_h4", 1, 16, 4, 16)
    attention("attn_p1", 2, 6, 3, 1)
    activations()
    misc()


if __name__ == "__main__":
    main()
