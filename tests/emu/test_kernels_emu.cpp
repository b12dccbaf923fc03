/* cuda/cuda_kernels.cu's kernels, run unmodified on the CPU (see fake_cuda/cuda_runtime.h and
 * emu_runtime.cpp), against the CPU backend (dd_cpu_backend) on small awkward shapes: every
 * launcher of cuda/cuda_internal.h that cuda_kernels.cu exports, forward and backward, with the
 * += contract (gradients start from random values) and NULL = skip (what a NULL says to skip is
 * left as it was). The softmax rows, fill_rows and colsum helpers have no CPU op: they are
 * checked against double-precision loops here. Tolerances as tests/test_gpu_ops.c's FP32 mode
 * (max |got - ref| / max |ref| <= 1e-5; integers and the deterministic embedding gradient
 * exact). The emulator checks launch configurations, barriers and warp shuffles that every
 * thread reaches, writes outside buffers (guard zones), and unwritten outputs show as NaN.
 * Exit status 0 when everything matches, 1 otherwise. */
#include <cuda_runtime.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_internal.h"
#include "emu.h"

/* what cuda_kernels.cu needs from the rest of the CUDA backend (not linked here) */
cudaStream_t dd_cuda_stream;

extern "C" const char *dd_cuda_base(const char *path) { return path; }
extern "C" int dd_cuda_fail(const char *file, int line, const char *call, cudaError_t) {
    printf("dd_cuda_fail: %s:%d: %s\n", file, line, call);
    return -1;
}
extern "C" int dd_cuda_capturing(void) { return 0; }
extern "C" void dd_cuda_note_fault(const char *what) { printf("dd_cuda_note_fault: %s\n", what); }

namespace {

const double FP32_TOL = 1e-5; /* tests/test_gpu_ops.c's FP32_TOL */
const dd_backend *cpu = &dd_cpu_backend;
EmuRng rng(7);
std::string tag;              /* the current case, for messages */
std::vector<float *> live;    /* the current case's device buffers */

std::vector<float> rnd(size_t n, float lo, float hi) {
    std::vector<float> v(n);
    for (float &x : v) x = lo + (hi - lo) * 0.5f * (rng.uniform() + 1.0f);
    return v;
}

float *dev_raw(size_t floats) {
    float *p = emu_alloc(floats ? floats : 1);
    live.push_back(p);
    return p;
}
/* an output: every value the sentinel NaN until a kernel writes it */
float *dout(size_t n) { return dev_raw(n); }
float *dup(const std::vector<float> &h) {
    float *p = dev_raw(h.size());
    memcpy(p, h.data(), h.size() * sizeof(float));
    return p;
}
int32_t *dup_i32(const std::vector<int32_t> &h) {
    int32_t *p = (int32_t *)dev_raw(h.size());
    memcpy(p, h.data(), h.size() * sizeof(int32_t));
    return p;
}
int64_t *dup_i64(int64_t v) {
    int64_t *p = (int64_t *)dev_raw(2);
    *p = v;
    return p;
}

void begin(const std::string &t) {
    tag = t;
    printf("%s\n", t.c_str());
}
void end() {
    emu_check_guards(tag.c_str());
    for (float *p : live) emu_free(p);
    live.clear();
}

/* max |a - b| / max |b|, NaN when either holds a NaN (as tests/test_gpu_ops.c) */
double max_rel_err(const float *a, const float *b, size_t n) {
    double dmax = 0.0, bmax = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]), r = fabs((double)b[i]);
        if (std::isnan(d)) return NAN;
        if (d > dmax) dmax = d;
        if (r > bmax) bmax = r;
    }
    if (bmax == 0.0) return dmax == 0.0 ? 0.0 : INFINITY;
    return dmax / bmax;
}

void expect(const char *what, const float *ref, const float *got, size_t n, double tol) {
    const double e = max_rel_err(got, ref, n);
    if (!(e <= tol))
        emu_fail("%s: %s: max relative error %.3e above %.1e", tag.c_str(), what, e, tol);
}
void expect(const char *what, const std::vector<float> &ref, const float *got, double tol) {
    expect(what, ref.data(), got, ref.size(), tol);
}
template <typename T> void expect_exact(const char *what, const T *ref, const T *got, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (ref[i] != got[i]) {
            emu_fail("%s: %s: differs at %zu", tag.c_str(), what, i);
            return;
        }
}
void ok(int rc, const char *what) {
    if (rc) emu_fail("%s: %s returned %d", tag.c_str(), what, rc);
}
#define OK(call) ok((call), #call)

/* ---------------------------------------------------------------- elementwise, data movement */

void case_act(size_t n, dd_act act) {
    begin("act " + std::to_string((int)act) + " n" + std::to_string(n));
    auto x = rnd(n, -4, 4), dy = rnd(n, -1, 1), dx = rnd(n, -1, 1), y(x);
    auto gx = dup(x), gy = dout(n), gdx = dup(dx);
    OK(cpu->act_forward(y.data(), x.data(), n, act));
    OK(cpu->act_backward(dx.data(), dy.data(), x.data(), n, act));
    OK(dd_cuda_act_forward(gy, gx, n, act));
    OK(dd_cuda_act_backward(gdx, dup(dy), gx, n, act));
    OK(dd_cuda_act_backward(NULL, dup(dy), gx, n, act));
    expect("y", y, gy, FP32_TOL);
    expect("dx", dx, gdx, FP32_TOL);
    end();
}

void case_add(size_t n, int with_da, int with_db) {
    begin("add n" + std::to_string(n) + (with_da ? " da" : "") + (with_db ? " db" : ""));
    auto a = rnd(n, -1, 1), b = rnd(n, -1, 1), dy = rnd(n, -1, 1), da = rnd(n, -1, 1),
         db = rnd(n, -1, 1);
    std::vector<float> y(n);
    auto gy = dout(n), gda = dup(da), gdb = dup(db);
    OK(cpu->add_forward(y.data(), a.data(), b.data(), n));
    OK(dd_cuda_add_forward(gy, dup(a), dup(b), n));
    OK(dd_cuda_add_backward(with_da ? gda : NULL, with_db ? gdb : NULL, dup(dy), n));
    if (with_da || with_db)
        OK(cpu->add_backward(with_da ? da.data() : NULL, with_db ? db.data() : NULL, dy.data(),
                             n));
    expect("y", y, gy, FP32_TOL);
    expect("da", da, gda, with_da ? FP32_TOL : 0.0);
    expect("db", db, gdb, with_db ? FP32_TOL : 0.0);
    end();
}

void case_concat(int N, int Ca, int Cb, int HW, int with_da, int with_db) {
    begin("concat N" + std::to_string(N) + " Ca" + std::to_string(Ca) + " Cb" +
          std::to_string(Cb) + " HW" + std::to_string(HW) + (with_da ? " da" : "") +
          (with_db ? " db" : ""));
    const size_t na = (size_t)N * Ca * HW, nb = (size_t)N * Cb * HW, ny = na + nb;
    auto a = rnd(na, -1, 1), b = rnd(nb, -1, 1), dy = rnd(ny, -1, 1), da = rnd(na, -1, 1),
         db = rnd(nb, -1, 1);
    std::vector<float> y(ny);
    auto gy = dout(ny), gda = dup(da), gdb = dup(db);
    OK(cpu->concat_forward(y.data(), a.data(), b.data(), N, Ca, Cb, HW));
    OK(cpu->concat_backward(with_da ? da.data() : NULL, with_db ? db.data() : NULL, dy.data(), N,
                            Ca, Cb, HW));
    OK(dd_cuda_concat_forward(gy, dup(a), dup(b), N, Ca, Cb, HW));
    OK(dd_cuda_concat_backward(with_da ? gda : NULL, with_db ? gdb : NULL, dup(dy), N, Ca, Cb,
                               HW));
    expect("y", y, gy, FP32_TOL);
    expect("da", da, gda, with_da ? FP32_TOL : 0.0);
    expect("db", db, gdb, with_db ? FP32_TOL : 0.0);
    end();
}

void case_upsample(int N, int C, int H, int W) {
    begin("upsample2x N" + std::to_string(N) + " C" + std::to_string(C) + " H" +
          std::to_string(H) + " W" + std::to_string(W));
    const size_t nx = (size_t)N * C * H * W, ny = 4 * nx;
    auto x = rnd(nx, -1, 1), dy = rnd(ny, -1, 1), dx = rnd(nx, -1, 1);
    std::vector<float> y(ny);
    auto gy = dout(ny), gdx = dup(dx);
    OK(cpu->upsample2x_forward(y.data(), x.data(), N, C, H, W));
    OK(cpu->upsample2x_backward(dx.data(), dy.data(), N, C, H, W));
    OK(dd_cuda_upsample2x_forward(gy, dup(x), N, C, H, W));
    OK(dd_cuda_upsample2x_backward(gdx, dup(dy), N, C, H, W));
    OK(dd_cuda_upsample2x_backward(NULL, dup(dy), N, C, H, W));
    expect("y", y, gy, FP32_TOL);
    expect("dx", dx, gdx, FP32_TOL);
    end();
}

/* values from a set of three, so windows hold ties (the first maximum wins) */
void case_maxpool(int N, int C, int H, int W) {
    begin("maxpool2x2 N" + std::to_string(N) + " C" + std::to_string(C) + " H" +
          std::to_string(H) + " W" + std::to_string(W));
    const size_t nx = (size_t)N * C * H * W, ny = (size_t)N * C * (H / 2) * (W / 2);
    std::vector<float> x(nx);
    for (float &v : x) v = (float)(int)(1.5f * (rng.uniform() + 1.0f)) - 1.0f;
    auto dy = rnd(ny, -1, 1), dx = rnd(nx, -1, 1);
    std::vector<float> y(ny);
    auto gx = dup(x), gy = dout(ny), gdx = dup(dx);
    OK(cpu->maxpool2x2_forward(y.data(), x.data(), N, C, H, W));
    OK(cpu->maxpool2x2_backward(dx.data(), dy.data(), x.data(), N, C, H, W));
    OK(dd_cuda_maxpool2x2_forward(gy, gx, N, C, H, W));
    OK(dd_cuda_maxpool2x2_backward(gdx, dup(dy), gx, N, C, H, W));
    expect("y", y, gy, FP32_TOL);
    expect("dx", dx, gdx, FP32_TOL);
    end();
}

/* a large table (rows * dim * N above 2^26) takes the atomic path: any order, within FP32_TOL */
void case_embedding(int N, int rows, int dim, int base) {
    const int atomic = (size_t)rows * dim * N > ((size_t)1 << 26);
    begin("embedding N" + std::to_string(N) + " rows" + std::to_string(rows) + " dim" +
          std::to_string(dim) + " base" + std::to_string(base) + (atomic ? " (atomic)" : ""));
    const size_t nt = (size_t)rows * dim, ny = (size_t)N * dim;
    std::vector<int32_t> idx(N);
    for (int n = 0; n < N; n++)
        idx[n] = base + (int32_t)(rng.next() % (uint64_t)(n % 3 ? rows : 2));
    auto table = rnd(nt, -1, 1), dy = rnd(ny, -1, 1), dt = rnd(nt, -1, 1);
    std::vector<float> y(ny);
    auto gy = dout(ny), gdt = dup(dt);
    auto gidx = dup_i32(idx);
    OK(cpu->embedding_forward(y.data(), table.data(), idx.data(), N, rows, dim, base));
    OK(cpu->embedding_backward(dt.data(), dy.data(), idx.data(), N, rows, dim, base));
    OK(dd_cuda_embedding_forward(gy, dup(table), gidx, N, rows, dim, base));
    OK(dd_cuda_embedding_backward(gdt, dup(dy), gidx, N, rows, dim, base));
    OK(dd_cuda_embedding_backward(NULL, dup(dy), gidx, N, rows, dim, base));
    expect("y", y, gy, 0.0);
    expect("dtable", dt, gdt, atomic ? FP32_TOL : 0.0);
    end();
}

/* ---------------------------------------------------------------- group norm */

/* params 0: dgamma, dbeta, dadd NULL; dx 0: dx NULL; ws 0: no workspace (the two-kernel path
 * for the parameters); res: a residual added to y (its gradient dres += dy). Backward from the
 * CPU's statistics, as tests/test_gpu_ops.c, so that the comparison isolates backward. */
void case_gn_ws(int N, int C, int HW, int G, int swish, int with_add, int params, int want_dx,
                int ws, int res) {
    char t[160];
    snprintf(t, sizeof t, "group_norm N%d C%d HW%d G%d%s%s%s%s%s%s", N, C, HW, G,
             swish ? " swish" : "", with_add ? " +add" : "", res ? " +res" : "",
             params ? "" : " (no params)", want_dx ? "" : " (no dx)",
             ws ? "" : " (no workspace)");
    begin(t);
    dd_gn_shape s = {N, C, HW, G, swish, 1e-5f, 0, 0};
    const size_t n = (size_t)N * C * HW, nng = (size_t)N * G, nnc = (size_t)N * C;
    auto x = rnd(n, -2, 3), gamma = rnd(C, 0.5f, 1.5f), beta = rnd(C, -0.5f, 0.5f),
         add = rnd(nnc, -1, 1), dy = rnd(n, -1, 1);
    auto dx = rnd(n, -1, 1), dg = rnd(C, -1, 1), db = rnd(C, -1, 1), da = rnd(nnc, -1, 1);
    auto r = rnd(n, -1, 1), dr = rnd(n, -1, 1);
    std::vector<float> y(n), mean(nng), rstd(nng);
    auto gdx = dup(dx), gdg = dup(dg), gdb = dup(db), gda = dup(da), gdr = dup(dr);
    const float *a = with_add ? add.data() : NULL;
    OK(cpu->group_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(),
                               beta.data(), a, res ? r.data() : NULL, &s));
    OK(cpu->group_norm_backward(want_dx ? dx.data() : NULL, params ? dg.data() : NULL,
                                params ? db.data() : NULL, params && with_add ? da.data() : NULL,
                                res ? dr.data() : NULL, dy.data(), x.data(), mean.data(),
                                rstd.data(), gamma.data(), beta.data(), a, &s, NULL));
    auto gx = dup(x), gg = dup(gamma), gb = dup(beta), ga = with_add ? dup(add) : nullptr;
    auto gy = dout(n), gmean = dout(nng), grstd = dout(nng);
    OK(dd_cuda_group_norm_forward(gy, gmean, grstd, gx, gg, gb, ga, res ? dup(r) : nullptr, &s));
    const size_t wsb = dd_cuda_group_norm_workspace(&s);
    void *gws = ws && wsb ? (void *)dout(wsb / sizeof(float) + 1) : nullptr;
    OK(dd_cuda_group_norm_backward(want_dx ? gdx : NULL, params ? gdg : NULL, params ? gdb : NULL,
                                   params && with_add ? gda : NULL, res ? gdr : NULL, dup(dy), gx,
                                   dup(mean), dup(rstd), gg, gb, ga, &s, gws));
    expect("y", y, gy, FP32_TOL);
    expect("mean", mean, gmean, FP32_TOL);
    expect("rstd", rstd, grstd, FP32_TOL);
    expect("dx", dx, gdx, want_dx ? FP32_TOL : 0.0);
    expect("dgamma", dg, gdg, params ? FP32_TOL : 0.0);
    expect("dbeta", db, gdb, params ? FP32_TOL : 0.0);
    expect("dadd", da, gda, params && with_add ? FP32_TOL : 0.0);
    expect("dres", dr, gdr, res ? FP32_TOL : 0.0);
    end();
}

void case_gn(int N, int C, int HW, int G, int swish, int with_add, int params, int want_dx) {
    for (int res = 0; res < 2; res++) {
        case_gn_ws(N, C, HW, G, swish, with_add, params, want_dx, 1, res);
        case_gn_ws(N, C, HW, G, swish, with_add, params, want_dx, 0, res);
    }
}

/* The forward's launch configurations, each forced in turn (DIFFUSION_GN=<name>; one that does
 * not hold the groups runs the fixed choice), then the autotuner (auto: prepare times them all in
 * the emulation and keeps one that agrees with the fixed choice), against the CPU. */
void case_gn_configs(int N, int C, int HW, int G, int swish, int with_add, int res) {
    dd_gn_shape s = {N, C, HW, G, swish, 1e-5f, 0, 0};
    const size_t n = (size_t)N * C * HW, nng = (size_t)N * G, nnc = (size_t)N * C;
    auto x = rnd(n, -2 + 30, 3 + 30), gamma = rnd(C, 0.5f, 1.5f), beta = rnd(C, -0.5f, 0.5f),
         add = rnd(nnc, -1, 1), r = rnd(n, -1, 1);
    std::vector<float> y(n), mean(nng), rstd(nng);
    OK(cpu->group_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(),
                               beta.data(), with_add ? add.data() : NULL, res ? r.data() : NULL,
                               &s));
    for (int c = -1; c == -1 || dd_cuda_gn_config_name(c); c++) {
        const char *name = c < 0 ? "auto" : dd_cuda_gn_config_name(c);
        char t[160];
        snprintf(t, sizeof t, "group_norm forward %s N%d C%d HW%d G%d%s%s%s (x + 30)", name, N, C,
                 HW, G, swish ? " swish" : "", with_add ? " +add" : "", res ? " +res" : "");
        begin(t);
        OK(dd_cuda_gn_set_policy(name));
        if (c < 0) OK(dd_cuda_group_norm_prepare(&s, with_add, res));
        auto gy = dout(n), gmean = dout(nng), grstd = dout(nng);
        OK(dd_cuda_group_norm_forward(gy, gmean, grstd, dup(x), dup(gamma), dup(beta),
                                      with_add ? dup(add) : nullptr, res ? dup(r) : nullptr, &s));
        expect("y", y, gy, FP32_TOL);
        expect("mean", mean, gmean, FP32_TOL);
        expect("rstd", rstd, grstd, FP32_TOL);
        end();
    }
    OK(dd_cuda_gn_set_policy("auto"));
}

/* The fused backward's launch configurations (the names starting with b), each forced in turn,
 * then auto (the first call of the shape times them all in the emulation), against the CPU:
 * from the CPU's statistics, adding into the same starting gradients. */
void case_gn_bwd_configs(int N, int C, int HW, int G, int swish, int all) {
    dd_gn_shape s = {N, C, HW, G, swish, 1e-5f, 0, 0};
    const size_t n = (size_t)N * C * HW, nng = (size_t)N * G, nnc = (size_t)N * C;
    auto x = rnd(n, -2, 3), gamma = rnd(C, 0.5f, 1.5f), beta = rnd(C, -0.5f, 0.5f),
         add = rnd(nnc, -1, 1), dy = rnd(n, -1, 1);
    auto dx0 = rnd(n, -1, 1), dg0 = rnd(C, -1, 1), db0 = rnd(C, -1, 1), da0 = rnd(nnc, -1, 1),
         dr0 = rnd(n, -1, 1);
    std::vector<float> y(n), mean(nng), rstd(nng);
    auto dx = dx0, dg = dg0, db = db0, da = da0, dr = dr0;
    const float *a = all ? add.data() : NULL;
    OK(cpu->group_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), gamma.data(),
                               beta.data(), a, NULL, &s));
    OK(cpu->group_norm_backward(dx.data(), all ? dg.data() : NULL, all ? db.data() : NULL,
                                all ? da.data() : NULL, all ? dr.data() : NULL, dy.data(),
                                x.data(), mean.data(), rstd.data(), gamma.data(), beta.data(), a,
                                &s, NULL));
    for (int c = -1; c == -1 || dd_cuda_gn_config_name(c); c++) {
        const char *name = c < 0 ? "auto" : dd_cuda_gn_config_name(c);
        if (c >= 0 && name[0] != 'b') continue;
        char t[160];
        snprintf(t, sizeof t, "group_norm backward %s N%d C%d HW%d G%d%s%s", name, N, C, HW, G,
                 swish ? " swish" : "", all ? " +params +add +res" : " (dx only)");
        begin(t);
        OK(dd_cuda_gn_set_policy(name));
        auto gdx = dup(dx0), gdg = dup(dg0), gdb = dup(db0), gda = dup(da0), gdr = dup(dr0);
        const size_t wsb = dd_cuda_group_norm_workspace(&s);
        void *gws = wsb ? (void *)dout(wsb / sizeof(float) + 1) : nullptr;
        OK(dd_cuda_group_norm_backward(gdx, all ? gdg : NULL, all ? gdb : NULL, all ? gda : NULL,
                                       all ? gdr : NULL, dup(dy), dup(x), dup(mean), dup(rstd),
                                       dup(gamma), dup(beta), all ? dup(add) : nullptr, &s, gws));
        expect("dx", dx, gdx, FP32_TOL);
        expect("dgamma", dg, gdg, all ? FP32_TOL : 0.0);
        expect("dbeta", db, gdb, all ? FP32_TOL : 0.0);
        expect("dadd", da, gda, all ? FP32_TOL : 0.0);
        expect("dres", dr, gdr, all ? FP32_TOL : 0.0);
        end();
    }
    OK(dd_cuda_gn_set_policy("auto"));
}

/* ---------------------------------------------------------------- softmax rows, dense helpers */

void case_softmax(int64_t rows, int L) {
    begin("softmax_rows rows" + std::to_string(rows) + " L" + std::to_string(L));
    const size_t n = (size_t)rows * L;
    auto s = rnd(n, -6, 6), d = rnd(n, -1, 1);
    std::vector<float> p(n), dref(n);
    for (int64_t r = 0; r < rows; r++) { /* in double: the reference, not the CPU's bits */
        const float *sr = &s[(size_t)r * L];
        double mx = -INFINITY, sum = 0.0, dot = 0.0;
        for (int j = 0; j < L; j++) mx = fmax(mx, (double)sr[j]);
        for (int j = 0; j < L; j++) sum += exp((double)sr[j] - mx);
        for (int j = 0; j < L; j++) p[(size_t)r * L + j] = (float)(exp((double)sr[j] - mx) / sum);
        for (int j = 0; j < L; j++) dot += (double)p[(size_t)r * L + j] * d[(size_t)r * L + j];
        for (int j = 0; j < L; j++)
            dref[(size_t)r * L + j] =
                (float)((double)p[(size_t)r * L + j] * ((double)d[(size_t)r * L + j] - dot));
    }
    float *gp = dup(s), *gd = dup(d);
    OK(dd_cuda_softmax_rows(gp, rows, L));
    expect("probs", p, gp, FP32_TOL);
    OK(dd_cuda_softmax_rows_backward(gd, dup(p), rows, L));
    expect("dscores", dref, gd, FP32_TOL);
    end();
}

void case_dense_helpers(int R, int Cc) {
    begin("fill_rows/colsum_add R" + std::to_string(R) + " C" + std::to_string(Cc));
    const size_t n = (size_t)R * Cc;
    auto b = rnd(Cc, -1, 1), m = rnd(n, -1, 1), out = rnd(Cc, -1, 1);
    std::vector<float> y(n);
    for (size_t i = 0; i < n; i++) y[i] = b[i % Cc];
    float *gy = dout(n), *gout = dup(out);
    for (int c = 0; c < Cc; c++) {
        double t = out[c];
        for (int r = 0; r < R; r++) t += m[(size_t)r * Cc + c];
        out[c] = (float)t;
    }
    OK(dd_cuda_fill_rows(gy, dup(b), R, Cc));
    OK(dd_cuda_colsum_add(gout, dup(m), R, Cc));
    expect("fill_rows", y, gy, 0.0);
    expect("colsum_add", out, gout, FP32_TOL);
    end();
}

/* ---------------------------------------------------------------- losses */

void case_mse(size_t n) {
    begin("mse n" + std::to_string(n));
    auto pred = rnd(n, -1, 1), target = rnd(n, -1, 1), dp = rnd(n, -1, 1);
    std::vector<float> loss(1), dloss = {0.7f};
    float *gp = dup(pred), *gt = dup(target), *gl = dout(1), *gdp = dup(dp);
    OK(cpu->mse_forward(loss.data(), pred.data(), target.data(), n));
    OK(cpu->mse_backward(dp.data(), dloss.data(), pred.data(), target.data(), n));
    /* twice: the multi-block reduction must leave its counter ready for the next call */
    for (int rep = 0; rep < 2; rep++) {
        *gl = NAN;
        OK(dd_cuda_mse_forward(gl, gp, gt, n));
        expect("loss", loss, gl, FP32_TOL);
    }
    OK(dd_cuda_mse_backward(gdp, dup(dloss), gp, gt, n));
    OK(dd_cuda_mse_backward(NULL, dup(dloss), gp, gt, n));
    expect("dpred", dp, gdp, FP32_TOL);
    end();
}

void case_xent(int N, int K) {
    begin("xent N" + std::to_string(N) + " K" + std::to_string(K));
    const size_t n = (size_t)N * K;
    auto logits = rnd(n, -5, 5), dl = rnd(n, -1, 1);
    std::vector<int32_t> lab(N);
    for (int i = 0; i < N; i++) lab[i] = (int32_t)(rng.next() % (uint64_t)K);
    std::vector<float> loss(1), probs(n), dloss = {1.3f};
    float *gl = dout(1), *gpr = dout(n), *gdl = dup(dl);
    int32_t *glab = dup_i32(lab);
    OK(cpu->xent_forward(loss.data(), probs.data(), logits.data(), lab.data(), N, K));
    OK(cpu->xent_backward(dl.data(), dloss.data(), probs.data(), lab.data(), N, K));
    OK(dd_cuda_xent_forward(gl, gpr, dup(logits), glab, N, K));
    OK(dd_cuda_xent_backward(gdl, dup(dloss), dup(probs), glab, N, K));
    OK(dd_cuda_xent_backward(NULL, dup(dloss), dup(probs), glab, N, K));
    expect("loss", loss, gl, FP32_TOL);
    expect("probs", probs, gpr, FP32_TOL);
    expect("dlogits", dl, gdl, FP32_TOL);
    end();
}

/* ---------------------------------------------------------------- optimiser, counters */

/* guard: 0 none, 1 finite, 2 NaN (the update must be skipped) */
void case_adam_ema(size_t n, int guard, int with_step) {
    begin("adam/ema n" + std::to_string(n) + " guard" + std::to_string(guard) +
          (with_step ? " step" : ""));
    auto p = rnd(n, -1, 1), m = rnd(n, -0.1f, 0.1f), v = rnd(n, 0, 0.01f), g = rnd(n, -1, 1),
         ema = rnd(n, -1, 1);
    const float gv = guard == 2 ? NAN : 1.0f;
    const int64_t step = 41;
    float *gp = dup(p), *gm = dup(m), *gvv = dup(v), *gema = dup(ema);
    const float *gg = guard ? dup({gv}) : NULL, *hg = guard ? &gv : NULL;
    const int64_t *gs = dup_i64(step);
    OK(cpu->adam_update(p.data(), m.data(), v.data(), g.data(), n, 1e-3f, 0.9, 0.999, 1e-8, &step,
                        hg));
    OK(dd_cuda_adam_update(gp, gm, gvv, dup(g), n, 1e-3f, 0.9, 0.999, 1e-8, gs, gg));
    OK(cpu->ema_update(ema.data(), p.data(), n, 0.999f, with_step ? &step : NULL, hg));
    OK(dd_cuda_ema_update(gema, gp, n, 0.999f, with_step ? gs : NULL, gg));
    expect("p", p, gp, FP32_TOL);
    expect("m", m, gm, FP32_TOL);
    expect("v", v, gvv, FP32_TOL);
    expect("ema", ema, gema, FP32_TOL);
    int64_t c = 5;
    int64_t *gc = dup_i64(5);
    OK(cpu->counter_add(&c, 3, hg));
    OK(dd_cuda_counter_add(gc, 3, gg));
    expect_exact("counter", &c, gc, 1);
    end();
}

/* the sampler's step start, `steps` times from the counter's start (-1): n samples, more than
 * one block's threads or fewer */
void case_sampler_advance(int n, int steps) {
    begin("sampler_advance n" + std::to_string(n) + " steps" + std::to_string(steps));
    std::vector<int32_t> ttab(steps), t(n);
    for (auto &s : ttab) s = (int32_t)(rng.next() % 1000);
    int64_t k = -1, noff = 77;
    int64_t *gk = dup_i64(k), *gnoff = dup_i64(noff);
    int32_t *gt = (int32_t *)dout(n), *gttab = dup_i32(ttab);
    for (int s = 0; s < steps; s++) {
        OK(cpu->sampler_advance(&k, &noff, 784, t.data(), ttab.data(), n));
        OK(dd_cuda_sampler_advance(gk, gnoff, 784, gt, gttab, n));
    }
    if (k != steps - 1 || noff != 77 + 784 * (int64_t)steps || t[n - 1] != ttab[steps - 1])
        emu_fail("%s: on the CPU: k %lld, noise offset %lld", tag.c_str(), (long long)k,
                 (long long)noff);
    expect_exact("t", t.data(), gt, (size_t)n);
    expect_exact("k", &k, gk, 1);
    expect_exact("noise offset", &noff, gnoff, 1);
    end();
}

/* ---------------------------------------------------------------- diffusion helpers */

void case_rng(size_t n, int N, int with_k) {
    begin("normal/train_draw n" + std::to_string(n) + " N" + std::to_string(N) +
          (with_k ? " k" : ""));
    const int64_t kk = 3;
    dd_rng_at at = {12345, 6, 1000, with_k ? &kk : NULL, 4099};
    dd_rng_at gat = at;
    gat.k = with_k ? dup_i64(kk) : NULL;
    std::vector<float> z(n);
    float *gz = dout(n);
    OK(cpu->normal(z.data(), n, at));
    OK(dd_cuda_normal(gz, n, gat));
    expect("normal", z, gz, FP32_TOL);
    std::vector<int32_t> t(N), lab_in(N), lab_out(N);
    for (auto &l : lab_in) l = (int32_t)(rng.next() % 10);
    int32_t *gt = (int32_t *)dout(N), *glo = (int32_t *)dout(N), *gli = dup_i32(lab_in);
    OK(cpu->train_draw(t.data(), lab_out.data(), lab_in.data(), N, 1000, 0.3f, 10, at));
    OK(dd_cuda_train_draw(gt, glo, gli, N, 1000, 0.3f, 10, gat));
    expect_exact("t", t.data(), gt, (size_t)N);
    expect_exact("labels", lab_out.data(), glo, (size_t)N);
    /* without labels only t is drawn: lab_out stays untouched */
    int32_t *gt2 = (int32_t *)dout(N), *glo2 = dup_i32(lab_in);
    OK(dd_cuda_train_draw(gt2, glo2, NULL, N, 1000, 0.3f, 10, gat));
    expect_exact("t (no labels)", t.data(), gt2, (size_t)N);
    expect_exact("labels untouched", lab_in.data(), glo2, (size_t)N);
    end();
}

void case_q_sample(int N, size_t per, int with_idx) {
    begin("q_sample N" + std::to_string(N) + " per" + std::to_string(per) +
          (with_idx ? " idx" : ""));
    const size_t n = (size_t)N * per, T = 20;
    auto x0 = rnd(n, -1, 1), noise = rnd(n, -2, 2), ca = rnd(T, 0, 1), cb = rnd(T, 0, 1);
    std::vector<int32_t> idx(N);
    for (auto &i : idx) i = (int32_t)(rng.next() % T);
    std::vector<float> xt(n);
    float *gxt = dout(n);
    OK(cpu->q_sample(xt.data(), x0.data(), noise.data(), ca.data(), cb.data(),
                     with_idx ? idx.data() : NULL, N, per));
    OK(dd_cuda_q_sample(gxt, dup(x0), dup(noise), dup(ca), dup(cb),
                        with_idx ? dup_i32(idx) : NULL, N, per));
    expect("xt", xt, gxt, FP32_TOL);
    end();
}

void case_sampler(size_t n, int guided, int clip, int noisy, int with_x0) {
    char t[128];
    snprintf(t, sizeof t, "sampler_step n%zu%s%s%s%s", n, guided ? " guided" : "",
             clip ? " clip" : "", noisy ? " noisy" : "", with_x0 ? " x0" : "");
    begin(t);
    auto x = rnd(n, -2, 2), out = rnd(n, -2, 2), unc = rnd(n, -2, 2), x0 = rnd(n, -1, 1);
    auto tab = rnd(3 * DD_SAMPLER_COLS, 0.1f, 1.2f);
    const int64_t k = 1;
    if (!noisy) tab[k * DD_SAMPLER_COLS + DD_SAMPLER_SIGMA] = 0.0f;
    dd_rng_at at = {99, 2, 77, &k, 1000};
    dd_rng_at gat = at;
    gat.k = dup_i64(k);
    float *gx = dup(x), *gx0 = dup(x0);
    OK(cpu->sampler_step(x.data(), with_x0 ? x0.data() : NULL, out.data(),
                         guided ? unc.data() : NULL, n, 2.5f, clip, tab.data(), &k, at));
    OK(dd_cuda_sampler_step(gx, with_x0 ? gx0 : NULL, dup(out), guided ? dup(unc) : NULL, n, 2.5f,
                            clip, dup(tab), gat.k, gat));
    expect("x", x, gx, FP32_TOL);
    expect("x0", x0, gx0, with_x0 ? FP32_TOL : 0.0);
    end();
}

} /* namespace */

int main() {
    for (int a = 0; a < DD_ACT_COUNT; a++) {
        case_act(1, (dd_act)a);
        case_act(777, (dd_act)a);
    }
    case_add(1, 1, 1);
    case_add(1234, 1, 0);
    case_add(300, 0, 1);
    case_concat(3, 2, 5, 7, 1, 1);
    case_concat(2, 1, 3, 1, 0, 1);
    case_concat(1, 4, 2, 9, 1, 0);
    case_upsample(2, 3, 5, 7);
    case_upsample(1, 1, 1, 1);
    case_maxpool(2, 3, 7, 9);
    case_maxpool(1, 2, 4, 2);
    case_embedding(7, 4, 5, 0);
    case_embedding(1, 1, 1, 0);
    case_embedding(9, 100, 64, 1); /* the timestep table: t = 1..T, rows 0..T-1 */
    case_embedding(64, 1024, 1025, 1); /* the atomic path */

    case_gn(2, 6, 5, 3, 1, 1, 1, 1);
    case_gn(3, 8, 49, 4, 0, 0, 1, 1);
    case_gn(1, 4, 300, 1, 1, 0, 0, 1); /* M above the block: strided loops */
    case_gn(33, 2, 3, 2, 1, 1, 1, 1);  /* more samples than the parameter kernel's warps */
    case_gn(2, 3, 40, 3, 0, 1, 1, 0);  /* parameters only */
    case_gn(1, 2, 1, 1, 1, 1, 1, 1);
    case_gn(2, 40, 20, 2, 1, 1, 1, 1); /* 20 channels a group: passes of 8 warps */
    case_gn(3, 7, 33, 1, 0, 1, 1, 1);  /* a warp a channel, one idle */
    case_gn(2, 3, 70, 1, 1, 1, 0, 1);  /* dx only, 3 channels: two warps a channel */
    case_gn(1, 300, 2, 1, 1, 1, 1, 1); /* beyond the one-pass kernel: the two-kernel path */
    case_gn(2, 4, 9, 2, 1, 1, 0, 0);   /* nothing but the residual's gradient */
    /* group sizes M that each forward configuration holds as the smallest of its block size:
     * 200, 392, 784, 1568, 3000, 6000 and 9000 (the re-reading one) values, scalar and float4 */
    case_gn_configs(2, 4, 50, 1, 1, 1, 0);
    case_gn_configs(3, 16, 49, 2, 1, 0, 1);
    case_gn_configs(2, 16, 49, 1, 0, 1, 1);
    case_gn_configs(2, 16, 784, 8, 1, 1, 0);
    case_gn_configs(2, 2, 1500, 1, 1, 0, 1);
    case_gn_configs(1, 8, 1500, 2, 1, 1, 1);
    case_gn_configs(1, 2, 4500, 1, 0, 1, 0);
    case_gn_configs(2, 6, 7, 2, 1, 1, 1); /* 21 values: no float4 configuration applies */
    /* 2 channels a group at 200 to 3000 positions: each backward configuration where it is the
     * smallest V that holds its block size's positions (b64v32 at 784, b256v32 at 3000, ...);
     * 8 channels at 7x7 (the UNet's 64 channels): more channels than 2 warps take at once */
    for (int hw : {200, 400, 784, 1500, 3000}) case_gn_bwd_configs(2, 4, hw, 2, 1, 1);
    case_gn_bwd_configs(2, 4, 784, 2, 0, 0);
    case_gn_bwd_configs(3, 16, 49, 2, 1, 1);

    case_softmax(1, 1);
    case_softmax(9, 31);
    case_softmax(17, 33);
    case_softmax(3, 100);
    case_dense_helpers(1, 1);
    case_dense_helpers(9, 33);
    case_dense_helpers(100, 70);

    case_mse(1);
    case_mse(1000);
    case_mse(70000); /* above 128 blocks' worth: the capped grid and its strided loop */
    case_xent(3, 10);
    case_xent(1, 1);
    case_xent(40, 37);

    for (int guard = 0; guard < 3; guard++) {
        case_adam_ema(1000, guard, 1);
        case_adam_ema(3, guard, 0);
    }
    case_sampler_advance(1, 1);
    case_sampler_advance(300, 3);
    case_sampler_advance(700, 2); /* more samples than the block's threads */

    case_rng(1, 1, 0);
    case_rng(1001, 37, 1);
    case_q_sample(3, 50, 0);
    case_q_sample(5, 7, 1);
    for (int mask = 0; mask < 16; mask++)
        case_sampler(mask & 1 ? 513 : 5, mask & 1, mask >> 1 & 1, mask >> 2 & 1, mask >> 3 & 1);

    const int f = emu_failures();
    printf(f ? "%d FAILURES\n" : "all kernels match the CPU backend\n", f);
    return f ? 1 : 0;
}
