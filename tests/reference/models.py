"""PyTorch modules of the models in ../shared/SPEC.md ("Models"), with the state_dict names the C
builders (models/*.c) register. For UNet with multipliers (1,2,4) the names, shapes and maths are
those of the PyTorch peer (../shared/peer/torch_unet_peer.py); here the levels are generic.

Conventions shared with the C side:
- timesteps t run 1..T and select table row t - 1 (the sinusoidal table is a buffer "table": in
  the state_dict, not among the parameters, so not in SPEC's parameter counts);
- class labels run 0..K-1; label K is the generic ("unconditioned") label of classifier-free
  guidance, its own embedding row (the original uses label 1 for it);
- GELU in the time MLP is the tanh form (Flux), GroupNorm eps 1e-5, skip concatenation puts the
  encoder's features first.
Used by make_reference.py and check_c_checkpoint.py; needs only torch.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoid(T, dim):
    """SPEC: row p-1 for position p = 1..T; for even r, f = 1/10000^(r/(dim-2))."""
    e = torch.zeros(T, dim, dtype=torch.float64)
    pos = torch.arange(1, T + 1, dtype=torch.float64)[:, None]
    r = torch.arange(0, dim, 2, dtype=torch.float64)[None, :]
    f = 1.0 / (10000.0 ** (r / (dim - 2)))
    e[:, 0::2] = torch.sin(pos * f)
    e[:, 1::2] = torch.cos(pos * f)
    return e.float()


class ConvEmbed(nn.Module):
    def __init__(self, cin, cout, emb, groups=8):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(groups, cout)
        self.emb = nn.Linear(emb, cout)

    def forward(self, x, e):
        return F.silu(self.norm(self.conv(x)) + self.emb(F.silu(e))[:, :, None, None])


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, groups=8):
        super().__init__()
        self.inl = ConvEmbed(cin, cout, emb, groups)
        self.conv = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm = nn.GroupNorm(groups, cout)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x, e):
        return F.silu(self.norm(self.conv(self.inl(x, e)))) + self.skip(x)


class Attention(nn.Module):
    def __init__(self, dim, nhead=4):
        super().__init__()
        self.nhead = nhead
        self.qkv = nn.Conv2d(dim, 3 * dim, 3, padding=1, bias=False)
        self.out = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        sh = lambda t: t.reshape(B, self.nhead, C // self.nhead, H * W).transpose(2, 3)
        q, k, v = sh(q), sh(k), sh(v)
        a = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(C // self.nhead), dim=-1) @ v
        return x + self.out(a.transpose(2, 3).reshape(B, C, H, W))


class UNet(nn.Module):
    """UNet(in, mc, T; mult), widths C0 = mc, Ci = mc * m_i. Module names: init, down{i+1},
    ds{i+1} (i < L-1), bottom, mid1, [attn, mid2], up{i+1}, us{i} (i > 0), final. With
    classes > 0 it is UNetConditioned: class_emb (K+1 rows), combined by concat or sum."""

    def __init__(self, cin=1, mc=16, T=100, mult=(1, 2, 4), attention=True, groups=8, heads=4,
                 classes=0, combine="concat"):
        super().__init__()
        assert mult[0] == 1
        td = 4 * mc
        self.register_buffer("table", sinusoid(T, td))
        self.t1, self.t2 = nn.Linear(td, td), nn.Linear(td, td)
        self.classes, self.combine = classes, combine
        if classes:
            self.class_emb = nn.Embedding(classes + 1, td)
        ed = 2 * td if classes and combine == "concat" else td
        L = len(mult)
        ch = [mc] + [mc * m for m in mult]
        self.L = L
        self.init = nn.Conv2d(cin, ch[0], 3, padding=1)
        for i in range(L):
            setattr(self, f"down{i + 1}", ResBlock(ch[i], ch[i], ed, groups))
            if i < L - 1:
                setattr(self, f"ds{i + 1}", nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1))
        self.bottom = nn.Conv2d(ch[L - 1], ch[L], 3, padding=1)
        self.mid1 = ResBlock(ch[L], ch[L], ed, groups)
        self.attn = Attention(ch[L], heads) if attention else None
        self.mid2 = ResBlock(ch[L], ch[L], ed, groups) if attention else None
        for i in range(L - 1, -1, -1):
            setattr(self, f"up{i + 1}", ResBlock(ch[i] + ch[i + 1], ch[i + 1], ed, groups))
            if i > 0:
                setattr(self, f"us{i}", nn.Conv2d(ch[i + 1], ch[i], 3, padding=1))
        self.final = nn.Conv2d(ch[1], cin, 3, padding=1)

    def forward(self, x, t, labels=None):
        e = self.t2(F.gelu(self.t1(self.table[t - 1]), approximate="tanh"))
        if self.classes:
            c = self.class_emb(labels)
            e = torch.cat([e, c], 1) if self.combine == "concat" else e + c
        h = self.init(x)
        skips = []
        for i in range(self.L):
            h = getattr(self, f"down{i + 1}")(h, e)
            skips.append(h)
            if i < self.L - 1:
                h = getattr(self, f"ds{i + 1}")(h)
        h = self.mid1(self.bottom(h), e)
        if self.attn is not None:
            h = self.mid2(self.attn(h), e)
        for i in range(self.L - 1, -1, -1):
            h = getattr(self, f"up{i + 1}")(torch.cat([skips[i], h], 1), e)
            if i > 0:
                h = getattr(self, f"us{i}")(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.final(h)


class Stage(nn.Module):
    """One stage of the 2-D denoiser: x(h) + t(table[t]) [+ c[label]], then swish."""

    def __init__(self, cin, h, classes):
        super().__init__()
        self.x = nn.Linear(cin, h)
        self.t = nn.Linear(h, h)
        self.c = nn.Embedding(classes + 1, h) if classes else None

    def forward(self, x, te, labels):
        s = self.x(x) + self.t(te)
        if self.c is not None:
            s = s + self.c(labels)
        return F.silu(s)


class MLP2D(nn.Module):
    """2-D denoiser: stages s1..s3, then out = Dense(h -> in). One shared table buffer (the
    original gives each stage its own table with the same values). x: (N, in) or (N, in, 1, 1)."""

    def __init__(self, cin=2, h=16, T=40, classes=0):
        super().__init__()
        self.register_buffer("table", sinusoid(T, h))
        self.s1, self.s2, self.s3 = Stage(cin, h, classes), Stage(h, h, classes), Stage(h, h, classes)
        self.out = nn.Linear(h, cin)

    def forward(self, x, t, labels=None):
        x = x.reshape(x.shape[0], -1)
        te = self.table[t - 1]
        h = self.s3(self.s2(self.s1(x, te, labels), te, labels), te, labels)
        return self.out(h)


class LeNet5(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(256, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def features(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.fc1(torch.flatten(h, 1)))
        return F.relu(self.fc2(h))

    def forward(self, x):
        return self.fc3(self.features(x))


def from_config(cfg):
    """A module from the C side's JSON config (dd_model_config_to_json), defaults as SPEC's."""
    kind = cfg["kind"]
    if kind in ("unet", "unet-fixed", "unet-cond"):
        return UNet(cin=cfg.get("in_channels", 1), mc=cfg.get("model_channels", 16),
                    T=cfg.get("timesteps", 100), mult=tuple(cfg.get("multipliers", (1, 2, 4))),
                    attention=cfg.get("attention", True), groups=cfg.get("groups", 8),
                    heads=cfg.get("heads", 4),
                    classes=cfg.get("classes", 10) if kind == "unet-cond" else 0,
                    combine=cfg.get("combine", "concat"))
    if kind in ("mlp2d", "mlp2d-cond"):
        cond = kind == "mlp2d-cond"
        return MLP2D(cin=cfg.get("in_channels", 2), h=cfg.get("hidden", 32 if cond else 16),
                     T=cfg.get("timesteps", 40), classes=cfg.get("classes", 3) if cond else 0)
    if kind == "lenet":
        return LeNet5(classes=cfg.get("classes", 10))
    raise ValueError("unknown model kind %r" % kind)


def count_parameters(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- safetensors, by hand
# Debian's torch ships without the safetensors package; the format (../shared/FORMATS.md) is small
# enough to write with json + struct. Written as the reference writer orders it: metadata first,
# tensors sorted by dtype (F32 before I32) then name, header padded with spaces to 8 bytes.

_DT = {torch.float32: ("F32", 4), torch.int32: ("I32", 4)}
_DT_ORDER = {"F32": 0, "I32": 1}
_FROM = {"F32": torch.float32, "I32": torch.int32, "F64": torch.float64, "I64": torch.int64}


def save_safetensors(path, tensors, metadata=None):
    """tensors: {name: torch tensor (float32 or int32, any shape)}; metadata: {str: str}."""
    import json
    import struct
    items = []
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DT:
            raise TypeError("%s: dtype %s" % (name, t.dtype))
        items.append((_DT_ORDER[_DT[t.dtype][0]], name, t))
    items.sort(key=lambda it: (it[0], it[1].encode()))
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for _, name, t in items:
        b = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DT[t.dtype][0], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    import os
    os.replace(tmp, path)


def load_safetensors(path):
    """Returns ({name: tensor}, metadata dict)."""
    import json
    import struct
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode())
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        dt = _FROM[info["dtype"]]
        t = torch.frombuffer(bytearray(data[base + b:base + e]), dtype=dt) if e > b else \
            torch.zeros(0, dtype=dt)
        out[name] = t.reshape(info["shape"]).clone()
    return out, meta
