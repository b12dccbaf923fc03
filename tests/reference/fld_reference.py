#!/usr/bin/env python3
"""Reference values for the Frechet distance core of FLD (host/fld.c, tests/test_fld.c).

Regenerate with:   python3 tests/reference/fld_reference.py
(needs numpy and scipy; writes small binary files into tests/reference/fld/, which are committed so
that the C tests never need Python.)

(needs numpy, scipy and mpmath)

The Frechet distance is computed here the way pytorch-fid / the original FID code do it, with
scipy.linalg.sqrtm of the non-symmetric product S1 @ S2 (a Schur method), which is independent of
the C code's route (symmetric eigendecompositions and an SVD). On (near-)singular covariances any
double-precision route loses digits, scipy's too (about 1e-8 relative on the cases below), so for
those cases the script also computes the value in 40-digit arithmetic with mpmath from the same
float64 matrices ("exact"): the C test holds the C result to 1e-6 of scipy's value and to a much
tighter bound of the exact one. Well-conditioned cases are cross-checked against a numpy
evaluation instead; the script refuses to write a case whose checks disagree.

File formats (all little-endian, C order):
  pair_<name>.bin   b"DDFLDREF", u64 d, f64 fd_scipy, f64 fd_exact (NaN when not computed;
                    for rankdef84 computed from the features, see fd_exact_features),
                    f64 mu1[d], f64 S1[d*d], f64 mu2[d], f64 S2[d*d]
  features.bin      b"DDFLDFEA", u64 n, u64 d, f32 x[n*d], f64 mean[d], f64 cov[d*d]
                    (mean and cov = np.mean(x, 0) and np.cov(x, rowvar=False, ddof=1) in float64)
"""
import os
import struct

import numpy as np
import scipy.linalg

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fld")


def fd_scipy(mu1, s1, mu2, s2):
    """FD as pytorch-fid computes it (without its eps retry: every case here must succeed)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        raise RuntimeError("sqrtm produced non-finite values")
    if np.iscomplexobj(covmean):
        # Rounding gives tiny imaginary parts on (near-)singular products; pytorch-fid drops them.
        if np.abs(covmean.imag).max() > 1e-6 * max(1.0, np.abs(covmean.real).max()):
            raise RuntimeError("sqrtm: large imaginary part %g" % np.abs(covmean.imag).max())
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fd_eig(mu1, s1, mu2, s2):
    """Cross-check in double: tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))."""
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T
    m = r @ s2 @ r
    e = np.linalg.eigvalsh((m + m.T) / 2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.sqrt(np.maximum(e, 0.0)).sum())


def fd_exact(mu1, s1, mu2, s2):
    """The same formula in 40-digit arithmetic, from the exact float64 inputs."""
    import mpmath as mp
    mp.mp.dps = 40
    d = mu1.shape[0]
    a, b = mp.matrix(s1.tolist()), mp.matrix(s2.tolist())
    e, q = mp.eigsy(a)
    r = q * mp.diag([mp.sqrt(max(x, 0)) for x in e]) * q.T
    m = r * b * r
    m = (m + m.T) / 2
    t = mp.fsum(mp.sqrt(max(x, 0)) for x in mp.eigsy(m, eigvals_only=True))
    diff = mp.fsum((mp.mpf(float(x)) - mp.mpf(float(y))) ** 2 for x, y in zip(mu1, mu2))
    tr = mp.fsum(a[i, i] + b[i, i] for i in range(d))
    return float(diff + tr - 2 * t)


def random_spd(rng, d, scale=1.0, ridge=0.05):
    a = rng.normal(size=(d, d)) * scale
    return a @ a.T / d + ridge * np.eye(d)


def fd_exact_features(f1, f2):
    """FD in 40-digit arithmetic of the exact means and covariances of two float64 feature sets
    (for covariances that are exactly singular in exact arithmetic: their float64 roundings are
    not, and the square roots of those rounding-level eigenvalues move the value by ~1e-8)."""
    import mpmath as mp
    mp.mp.dps = 40
    d = f1.shape[1]

    def stats(f):
        n = f.shape[0]
        g = [[mp.mpf(float(v)) for v in row] for row in f]
        mu = [mp.fsum(g[k][j] for k in range(n)) / n for j in range(d)]
        c = mp.matrix(d, d)
        for i in range(d):
            for j in range(i, d):
                c[i, j] = c[j, i] = mp.fsum((g[k][i] - mu[i]) * (g[k][j] - mu[j]) for k in range(n)) / (n - 1)
        return mu, c

    (m1, a), (m2, b) = stats(f1), stats(f2)
    e, q = mp.eigsy(a)
    r = q * mp.diag([mp.sqrt(max(x, 0)) for x in e]) * q.T
    m = r * b * r
    m = (m + m.T) / 2
    t = mp.fsum(mp.sqrt(max(x, 0)) for x in mp.eigsy(m, eigvals_only=True))
    diff = mp.fsum((x - y) ** 2 for x, y in zip(m1, m2))
    return float(diff + mp.fsum(a[i, i] + b[i, i] for i in range(d)) - 2 * t)


def write_pair(name, mu1, s1, mu2, s2, exact=False):
    """exact: False (cross-check with numpy only), True (compute the 40-digit value from these
    matrices) or a float (that value, computed by the caller)."""
    d = mu1.shape[0]
    s1 = (s1 + s1.T) / 2  # exactly symmetric, so the C side reads the same matrix either triangle
    s2 = (s2 + s2.T) / 2
    ref = fd_scipy(mu1, s1, mu2, s2)
    if exact is not False:
        ex = fd_exact(mu1, s1, mu2, s2) if exact is True else float(exact)
        chk, what, tol = ex, "exact", 1e-7
    else:
        ex = float("nan")
        chk, what, tol = fd_eig(mu1, s1, mu2, s2), "numpy eigen route", 1e-9
    rel = abs(ref - chk) / abs(chk)
    if rel > tol:
        raise RuntimeError("%s: scipy %.17g and %s %.17g disagree (rel %.2e)" % (name, ref, what, chk, rel))
    with open(os.path.join(OUT, "pair_%s.bin" % name), "wb") as f:
        f.write(b"DDFLDREF")
        f.write(struct.pack("<Qdd", d, ref, ex))
        for a in (mu1, s1, mu2, s2):
            f.write(np.ascontiguousarray(a, dtype="<f8").tobytes())
    print("pair_%s: d=%d FD=%.12g (%s agrees to %.1e)" % (name, d, ref, what, rel))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240521)

    # Random SPD pairs of increasing size, means of comparable magnitude.
    for d in (5, 20, 84):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d) * 0.5 + 0.3
        write_pair("spd%d" % d, mu1, random_spd(rng, d, 1.0), mu2, random_spd(rng, d, 1.3, 0.2))

    # Covariances as the FLD command makes them: np.cov of 500 ReLU-like feature vectors of two
    # slightly different distributions (d = 84, as LeNet5's features).
    d = 84
    mix1, mix2 = rng.normal(size=(d, d)) / np.sqrt(d), rng.normal(size=(d, d)) / np.sqrt(d)
    f1 = np.maximum(rng.normal(size=(500, d)) @ mix1 + 1.0, 0.0) * 3.0
    f2 = np.maximum(rng.normal(size=(500, d)) @ (0.9 * mix1 + 0.3 * mix2) + 1.1, 0.0) * 3.0
    write_pair("features84", f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))

    # Near-singular: S1 of rank 30 plus 1e-10 I (a feature set with few effective directions),
    # S2 full rank.
    b = rng.normal(size=(d, 30))
    s1 = b @ b.T / 30 + 1e-10 * np.eye(d)
    write_pair("nearsingular84", rng.normal(size=d), s1, rng.normal(size=d), random_spd(rng, d, 1.0, 0.1),
               exact=True)

    # Both near-singular (ranks 30 and 40, plus 1e-10 I): S1 S2 has eigenvalues near 1e-20, where
    # routes through eigenvalues of a product lose about sqrt(eps) each.
    c = rng.normal(size=(d, 40))
    write_pair("bothsingular84", rng.normal(size=d), s1, rng.normal(size=d), c @ c.T / 40 + 1e-10 * np.eye(d),
               exact=True)

    # Exactly singular, as real LeNet features give them: feature 7 dead (always 0) in both sets,
    # feature 11 dead in the first set only.
    g1 = np.maximum(rng.normal(size=(400, d)) @ mix1 + 0.8, 0.0)
    g2 = np.maximum(rng.normal(size=(400, d)) @ mix2 + 0.8, 0.0)
    g1[:, 7] = g2[:, 7] = g1[:, 11] = 0.0
    write_pair("dead84", g1.mean(0), np.cov(g1, rowvar=False), g2.mean(0), np.cov(g2, rowvar=False), exact=True)

    # Rank-deficient without a zero row: fewer vectors than features (40 and 60 of d = 84), so the
    # null spaces are not along the axes. The reference is the exact-arithmetic value of the
    # exact covariances, which the C code's cut of rounding-level eigenvalues recovers.
    h1, h2 = rng.normal(size=(40, d)) @ mix1, rng.normal(size=(60, d)) @ mix1
    write_pair("rankdef84", h1.mean(0), np.cov(h1, rowvar=False), h2.mean(0), np.cov(h2, rowvar=False),
               exact=fd_exact_features(h1, h2))

    # Fixed feature matrix for mean / covariance: float32, ReLU-like with a large common offset
    # (so that a naive sum-of-squares formula would lose digits) and one dead (always zero)
    # feature, n not a multiple of the batch sizes the C test uses.
    n, d = 301, 84
    x = (np.maximum(rng.normal(size=(n, d)) @ mix1 + 0.5, 0.0) * 2.0 + 1000.0).astype(np.float32)
    x[:, 7] = 0.0
    xd = x.astype(np.float64)
    mean, cov = xd.mean(0), np.cov(xd, rowvar=False, ddof=1)
    with open(os.path.join(OUT, "features.bin"), "wb") as f:
        f.write(b"DDFLDFEA")
        f.write(struct.pack("<QQ", n, d))
        f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
        f.write(np.ascontiguousarray(mean, dtype="<f8").tobytes())
        f.write(np.ascontiguousarray(cov, dtype="<f8").tobytes())
    print("features: n=%d d=%d" % (n, d))


if __name__ == "__main__":
    main()
