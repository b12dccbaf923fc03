#!/usr/bin/env python3
"""Independent reference values for tests/test_schedule.c, written from ../shared/SPEC.md's
formulas in numpy float64 (no code shared with host/schedule.c).

Writes, under tests/reference/schedule/:
  KIND_T.csv      t,beta,alpha_bar,alpha_bar_prev,posterior_variance,coef1,coef2  for t = 1..T
  ddim_T_TAU.csv  t,t_next: the DDIM step pairs from reverse(floor(numpy.linspace(1, T, tau+1)))

Run from anywhere: /usr/bin/python3 tests/reference/schedule_reference.py
"""
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schedule")


def linear_betas(T, b0=1e-4, b1=0.02):
    # SPEC: both ends scaled by 1000/T, then T evenly spaced values
    scale = 1000.0 / T
    return np.linspace(b0 * scale, b1 * scale, T, dtype=np.float64)


def cosine_betas(T, s=0.008):
    i = np.arange(T + 1, dtype=np.float64)
    f = np.cos(((i / T + s) / (1 + s)) * np.pi / 2) ** 2
    abar = f / f[0]
    return np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)


def sigmoid_betas(T, start=-3.0, end=3.0, tau=1.0):
    # lucidrains/denoising-diffusion-pytorch sigmoid_beta_schedule, in numpy
    sig = lambda z: 1 / (1 + np.exp(-z))
    t = np.linspace(0, T, T + 1, dtype=np.float64) / T
    v_start, v_end = sig(start / tau), sig(end / tau)
    abar = (-sig((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    abar = abar / abar[0]
    return np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)


def derived(beta):
    alpha = 1 - beta
    abar = np.cumprod(alpha)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = beta * (1 - abar_prev) / (1 - abar)
    coef1 = beta * np.sqrt(abar_prev) / (1 - abar)
    coef2 = (1 - abar_prev) * np.sqrt(alpha) / (1 - abar)
    return abar, abar_prev, post_var, coef1, coef2


def main():
    os.makedirs(OUT, exist_ok=True)
    kinds = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}
    for name, fn in kinds.items():
        for T in (40, 100, 1000):
            beta = fn(T)
            abar, abar_prev, pv, c1, c2 = derived(beta)
            with open(os.path.join(OUT, f"{name}_{T}.csv"), "w") as f:
                f.write("t,beta,alpha_bar,alpha_bar_prev,posterior_variance,coef1,coef2\n")
                for k in range(T):
                    row = (beta[k], abar[k], abar_prev[k], pv[k], c1[k], c2[k])
                    f.write(f"{k + 1}," + ",".join(f"{v:.10e}" for v in row) + "\n")
    # the 2-D example's schedule: linear from (8e-6, 9e-5) at T = 40
    beta = linear_betas(40, 8e-6, 9e-5)
    abar, abar_prev, pv, c1, c2 = derived(beta)
    with open(os.path.join(OUT, "linear2d_40.csv"), "w") as f:
        f.write("t,beta,alpha_bar,alpha_bar_prev,posterior_variance,coef1,coef2\n")
        for k in range(40):
            row = (beta[k], abar[k], abar_prev[k], pv[k], c1[k], c2[k])
            f.write(f"{k + 1}," + ",".join(f"{v:.10e}" for v in row) + "\n")
    for T, tau in ((100, 10), (100, 20), (1000, 50), (100, 100), (40, 7)):
        times = np.floor(np.linspace(1, T, tau + 1)).astype(np.int64)[::-1]
        with open(os.path.join(OUT, f"ddim_{T}_{tau}.csv"), "w") as f:
            f.write("t,t_next\n")
            for a, b in zip(times[:-1], times[1:]):
                f.write(f"{a},{b}\n")


if __name__ == "__main__":
    main()
