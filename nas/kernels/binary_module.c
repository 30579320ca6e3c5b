/* nas.kernels._binary: CPython binding, ISA dispatch and the threaded driver of the
 * packed-binary kernels. The Python-facing layer is nas/kernels/__init__.py; it allocates
 * every output and passes numpy views (buffer protocol); this module checks each buffer's
 * item type and size before touching it, and releases the GIL while it computes.
 *
 * Dispatch: AVX-512 VPOPCNTDQ -> AVX2 -> portable C, chosen at import from the CPU, or
 * forced with NAS_KERNEL_ISA=avx512|avx2|portable (a level the CPU lacks is an error at the
 * first kernel call), or at run time with set_isa().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "binary.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the packed layout is little-endian; big-endian hosts are not supported"
#endif

/* ------------------------------------------------------------------ dispatch */

static const kernel_level *g_level = NULL; /* level in use; NULL with g_error set */
static char g_error[256];                  /* why NAS_KERNEL_ISA could not be honoured */

static int level_supported(const kernel_level *lv)
{
#ifdef NAS_X86
    if (lv == &nas_level_avx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("fma");
    if (lv == &nas_level_avx2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#endif
    return lv == &nas_level_portable;
}

static const kernel_level *const ALL_LEVELS[] = {
#ifdef NAS_X86
    &nas_level_avx512, &nas_level_avx2,
#endif
    &nas_level_portable,
};
#define N_LEVELS ((int)(sizeof(ALL_LEVELS) / sizeof(ALL_LEVELS[0])))

static const kernel_level *level_by_name(const char *name)
{
    for (int i = 0; i < N_LEVELS; i++)
        if (strcmp(ALL_LEVELS[i]->name, name) == 0)
            return ALL_LEVELS[i];
    return NULL;
}

static const kernel_level *best_level(void)
{
    for (int i = 0; i < N_LEVELS; i++)
        if (level_supported(ALL_LEVELS[i]))
            return ALL_LEVELS[i];
    return &nas_level_portable;
}

/* Choose the level from NAS_KERNEL_ISA (unset or empty: the best the CPU supports). */
static void choose_from_env(void)
{
    const char *env = getenv("NAS_KERNEL_ISA");
    g_error[0] = '\0';
    g_level = NULL;
    if (!env || !*env) {
        g_level = best_level();
        return;
    }
    const kernel_level *lv = level_by_name(env);
    if (!lv)
        snprintf(g_error, sizeof g_error,
                 "NAS_KERNEL_ISA=%.40s is not a kernel level; expected avx512, avx2 or portable", env);
    else if (!level_supported(lv))
        snprintf(g_error, sizeof g_error,
                 "NAS_KERNEL_ISA=%.40s but this CPU does not support it (supported: %s)", env,
                 best_level()->name);
    else
        g_level = lv;
}

static const kernel_level *current_level(void)
{
    if (!g_level)
        PyErr_SetString(PyExc_RuntimeError, g_error);
    return g_level;
}

/* ------------------------------------------------------------------ buffers */

enum { F32, U64 };

/* Get a C-contiguous buffer of float32 (F32) or 64-bit integer (U64) items holding at least
 * `need` items. On failure sets an exception naming `what` and returns -1. */
static int get_buf(PyObject *o, Py_buffer *b, int writable, int kind, Py_ssize_t need, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, b, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous%s array", what, writable ? " writable" : "");
        return -1;
    }
    const char *f = b->format ? b->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    int ok = kind == F32 ? (b->itemsize == 4 && strcmp(f, "f") == 0)
                         : (b->itemsize == 8 && f[1] == '\0' && strchr("lLqQ", f[0]) != NULL);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected %s items, got format '%s'", what,
                     kind == F32 ? "float32" : "64-bit integer", b->format ? b->format : "B");
        PyBuffer_Release(b);
        return -1;
    }
    if (b->len < need * b->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least %zd items, got %zd", what, need,
                     b->len / b->itemsize);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static int clamp_threads(long threads)
{
#ifdef _OPENMP
    return threads < 1 ? 1 : (int)(threads > 1024 ? 1024 : threads);
#else
    (void)threads;
    return 1;
#endif
}

/* ------------------------------------------------------------------ pack */

static PyObject *py_pack(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo;
    long rows, C, threads;
    if (!PyArg_ParseTuple(args, "OOlll", &xo, &oo, &rows, &C, &threads))
        return NULL;
    const kernel_level *lv = current_level();
    if (!lv)
        return NULL;
    if (rows < 0 || C < 1)
        return PyErr_Format(PyExc_ValueError, "pack: bad shape rows=%ld C=%ld", rows, C);
    const long words = (C + 63) / 64;
    Py_buffer xb, ob;
    if (get_buf(xo, &xb, 0, F32, rows * C, "pack: x") < 0)
        return NULL;
    if (get_buf(oo, &ob, 1, U64, rows * words, "pack: out") < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    const float *x = xb.buf;
    uint64_t *out = ob.buf;
    const int nt = clamp_threads(threads);
    Py_BEGIN_ALLOW_THREADS
    if (nt > 1 && rows >= 2 * nt && rows * C >= (1L << 15)) { /* small inputs: not worth a fork */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
        {
            const long t = omp_get_thread_num(), T = omp_get_num_threads();
            const long r0 = rows * t / T, r1 = rows * (t + 1) / T;
            lv->pack(x + r0 * C, out + r0 * words, r1 - r0, C);
        }
#endif
    } else {
        lv->pack(x, out, rows, C);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ weights */

static long lane_groups(long cout)
{
    const long g = (cout + 7) / 8;
    return (g + NAS_GROUP_ALIGN - 1) / NAS_GROUP_ALIGN * NAS_GROUP_ALIGN;
}

static PyObject *py_lane_groups(PyObject *self, PyObject *args)
{
    long cout;
    if (!PyArg_ParseTuple(args, "l", &cout))
        return NULL;
    if (cout < 1)
        return PyErr_Format(PyExc_ValueError, "lane_groups: bad Cout %ld", cout);
    return PyLong_FromLong(lane_groups(cout));
}

/* (Cout, kh, kw, wi) export layout -> (gpad, kh, kw, wi, 8) lane layout. */
static PyObject *py_repack_weights(PyObject *self, PyObject *args)
{
    PyObject *wo, *oo;
    long cout, kh, kw, wi;
    if (!PyArg_ParseTuple(args, "OOllll", &wo, &oo, &cout, &kh, &kw, &wi))
        return NULL;
    if (cout < 1 || kh < 1 || kw < 1 || wi < 1)
        return PyErr_Format(PyExc_ValueError, "repack_weights: bad shape (%ld, %ld, %ld, %ld)", cout, kh, kw, wi);
    const long T = kh * kw * wi, gpad = lane_groups(cout);
    Py_buffer wb, ob;
    if (get_buf(wo, &wb, 0, U64, cout * T, "repack_weights: w") < 0)
        return NULL;
    if (get_buf(oo, &ob, 1, U64, gpad * T * 8, "repack_weights: out") < 0) {
        PyBuffer_Release(&wb);
        return NULL;
    }
    const uint64_t *w = wb.buf;
    uint64_t *out = ob.buf;
    for (long g = 0; g < gpad; g++)
        for (long t = 0; t < T; t++)
            for (long l = 0; l < 8; l++) {
                const long c = g * 8 + l;
                out[(g * T + t) * 8 + l] = c < cout ? w[c * T + t] : 0;
            }
    PyBuffer_Release(&wb);
    PyBuffer_Release(&ob);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ epilogue */

/* The packed output bit of one channel, computed exactly as the kernels' float epilogue:
 * one rounding for the multiply, one for the add (the file is built with -ffp-contract=off). */
static int packed_bit(long K, long pop, float s, float b)
{
    float y = (float)(K - 2 * pop);
    y = y * s;
    y = y + b;
    return y >= 0.0f;
}

/* Threshold form of packed_bit over pop in [0, K]: bit = lo <= pop <= hi. The float epilogue
 * is monotone in dot = K - 2 pop (rounding is monotone), so the true set is a prefix
 * (scale > 0), a suffix (scale < 0) or all / nothing (scale = 0). Start from the real-valued
 * boundary and step until packed_bit itself confirms it. Returns 0 for a non-finite scale
 * or bias, where monotonicity is not guaranteed (the caller then uses the float path). */
static int threshold(long K, float s, float b, int32_t *lo, int32_t *hi)
{
    if (!isfinite(s) || !isfinite(b))
        return 0;
    if (s == 0.0f) { /* dot * s = +-0, so the bit is the same for every pop */
        const int bit = packed_bit(K, 0, s, b);
        *lo = bit ? 0 : (int32_t)(K + 1);
        *hi = bit ? (int32_t)K : (int32_t)(K + 1);
        return 1;
    }
    /* dot * s + b = 0 at pop = t; only a guess (truncated, clamped): the loops settle the
     * exact boundary with packed_bit itself. */
    const double t = 0.5 * ((double)K + (double)b / (double)s);
    long T = t > (double)K ? K : t < 0.0 ? -1 : (long)t;
    if (s > 0) { /* true for pop <= T: the largest such T in [-1, K] */
        while (T >= 0 && !packed_bit(K, T, s, b)) T--;
        while (T < K && packed_bit(K, T + 1, s, b)) T++;
        *lo = 0, *hi = (int32_t)T; /* T = -1: never */
    } else { /* true for pop >= T: the smallest such T in [0, K + 1] */
        T = T + 1;
        while (T <= K && !packed_bit(K, T, s, b)) T++;
        while (T > 0 && packed_bit(K, T - 1, s, b)) T--;
        *lo = (int32_t)T, *hi = (int32_t)K; /* T = K + 1: never */
    }
    if (*lo > *hi) /* never: one canonical empty window */
        *lo = *hi = (int32_t)(K + 1);
    return 1;
}

/* epilogue(scale, bias, cout, K, out, thresholds) -> bool
 * Fill `out` (NAS_EPILOGUE_SLOTS(gpad) float32 slots, layout in binary.h) with scale and bias
 * padded to gpad * 8 channels, then, if `thresholds`, the windows of the packed-only
 * threshold form. Returns whether the windows are valid (False for a non-finite scale or
 * bias). */
static PyObject *py_epilogue(PyObject *self, PyObject *args)
{
    PyObject *so, *bo, *oo;
    long cout, K;
    int want;
    if (!PyArg_ParseTuple(args, "OOllOp", &so, &bo, &cout, &K, &oo, &want))
        return NULL;
    if (cout < 1 || K < 1 || K >= (1L << 24))
        return PyErr_Format(PyExc_ValueError, "epilogue: bad Cout=%ld / K=%ld", cout, K);
    const long gp8 = lane_groups(cout) * 8;
    Py_buffer sb, bb, ob;
    if (get_buf(so, &sb, 0, F32, cout, "epilogue: scale") < 0)
        return NULL;
    if (get_buf(bo, &bb, 0, F32, cout, "epilogue: bias") < 0) {
        PyBuffer_Release(&sb);
        return NULL;
    }
    if (get_buf(oo, &ob, 1, F32, NAS_EPILOGUE_SLOTS(gp8 / 8), "epilogue: out") < 0) {
        PyBuffer_Release(&sb);
        PyBuffer_Release(&bb);
        return NULL;
    }
    float *scale = ob.buf, *bias = scale + gp8;
    int32_t *lo = (int32_t *)(bias + gp8), *hi = lo + gp8;
    int64_t *neglo = (int64_t *)(hi + gp8), *win = neglo + gp8;
    const float *s = sb.buf, *b = bb.buf;
    int ok = want;
    for (long c = 0; c < gp8; c++) {
        scale[c] = c < cout ? s[c] : 0.0f;
        bias[c] = c < cout ? b[c] : 0.0f;
        lo[c] = hi[c] = (int32_t)(K + 1); /* padding channels: bit 0 */
        if (ok && c < cout)
            ok = threshold(K, s[c], b[c], &lo[c], &hi[c]);
        neglo[c] = -(int64_t)lo[c];
        win[c] = (int64_t)hi[c] - lo[c];
    }
    PyBuffer_Release(&sb);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&ob);
    return PyBool_FromLong(ok);
}

/* ------------------------------------------------------------------ conv */

/* The one-padded input the kernels read: rows of Wp = W + 2 pw pixels, Hp = H + 2 ph rows
 * per image, +1 pixels (all valid bits set) around the image. */
typedef struct padded {
    uint64_t *buf;     /* (N, Hp, Wp, wi) words, or NULL when there is no padding */
    const uint64_t *x; /* what the kernels read: buf, or the input itself */
    long Hp, Wp;
} padded;

/* Fill padded rows [r0, r1) (row index over N * Hp) from the input. */
static void pad_rows(const conv_args *a, const padded *pd, const uint64_t *one, long r0, long r1)
{
    const int wi = a->wi;
    for (long r = r0; r < r1; r++) {
        const long n = r / pd->Hp, y = r % pd->Hp - a->ph;
        uint64_t *row = pd->buf + r * pd->Wp * wi;
        const int inside = y >= 0 && y < a->H;
        for (long xx = 0; xx < pd->Wp; xx++) {
            if (inside && xx == a->pw) { /* the image row in one copy */
                memcpy(row + xx * wi, a->x + (n * a->H + y) * a->W * wi, sizeof(uint64_t) * a->W * wi);
                xx += a->W - 1;
                continue;
            }
            for (int w = 0; w < wi; w++)
                row[xx * wi + w] = one[w];
        }
    }
}

/* Output pixels [ox0, ox1) of output row (n, oy) for the channel block from group g0. */
static void conv_item(const kernel_level *lv, const conv_args *a, const padded *pd, long n, long oy, long ox0,
                      long ox1, int g0)
{
    const uint64_t *rows[a->kh];
    for (int ky = 0; ky < a->kh; ky++)
        rows[ky] = pd->x + ((n * pd->Hp + oy * a->sh + ky) * pd->Wp + ox0 * a->sw) * a->wi;
    lv->conv(a, rows, (long)a->sw * a->wi, ox1 - ox0, (n * a->Ho + oy) * a->Wo + ox0, g0);
}

/* Pads the input (when needed), then runs every (channel block, output row, chunk of the
 * row) item, on `threads` OpenMP threads. */
static void run_conv(const kernel_level *lv, const conv_args *a, const padded *pd, const uint64_t *one,
                     int threads)
{
    enum { CHUNK = 64 }; /* output pixels per work item along a row */
    const int G = lv->groups_per_block;
    const long nblocks = (a->gvalid + G - 1) / G;
    const long nrows = a->N * a->Ho;
    const long nchunks = (a->Wo + CHUNK - 1) / CHUNK;
    const long per_block = nrows * nchunks;
    const long nitems = nblocks * per_block;
    const long npad = pd->buf ? a->N * pd->Hp : 0; /* padded rows to fill */
    /* Block-major order: a thread's consecutive items share weights (kept in L1/L2). */
#define NAS_ITEM(it)                                                                      \
    do {                                                                                  \
        const long b = (it) / per_block, rem = (it) % per_block;                          \
        const long r = rem / nchunks, ox0 = (rem % nchunks) * CHUNK;                      \
        const long ox1 = ox0 + CHUNK < a->Wo ? ox0 + CHUNK : a->Wo;                       \
        conv_item(lv, a, pd, r / a->Ho, r % a->Ho, ox0, ox1, (int)(b * G));               \
    } while (0)
#ifdef _OPENMP
    if (threads > 1 && nitems > 1) {
#pragma omp parallel num_threads(threads)
        {
            if (npad) {
                const long t = omp_get_thread_num(), T = omp_get_num_threads();
                pad_rows(a, pd, one, npad * t / T, npad * (t + 1) / T);
#pragma omp barrier
            }
#pragma omp for schedule(static)
            for (long it = 0; it < nitems; it++)
                NAS_ITEM(it);
        }
        return;
    }
#endif
    if (npad)
        pad_rows(a, pd, one, 0, npad);
    for (long it = 0; it < nitems; it++)
        NAS_ITEM(it);
#undef NAS_ITEM
}

/* conv2d(x, w_lanes, ep, use_thresholds, N, H, W, Cin, Cout, kh, kw, sh, sw, ph, pw,
 *        residual | None, y_float | None, y_packed | None, threads) */
static PyObject *py_conv2d(PyObject *self, PyObject *args)
{
    PyObject *xo, *wo, *eo, *ro, *yfo, *ypo;
    int use_thr;
    long N, H, W, cin, cout, kh, kw, sh, sw, ph, pw, threads;
    if (!PyArg_ParseTuple(args, "OOOplllllllllllOOOl", &xo, &wo, &eo, &use_thr, &N, &H, &W, &cin, &cout, &kh, &kw,
                          &sh, &sw, &ph, &pw, &ro, &yfo, &ypo, &threads))
        return NULL;
    const kernel_level *lv = current_level();
    if (!lv)
        return NULL;
    if (N < 1 || H < 1 || W < 1 || cin < 1 || cout < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 ||
        pw < 0)
        return PyErr_Format(PyExc_ValueError, "conv2d: bad geometry N=%ld H=%ld W=%ld Cin=%ld Cout=%ld k=%ldx%ld "
                            "stride=%ldx%ld pad=%ldx%ld", N, H, W, cin, cout, kh, kw, sh, sw, ph, pw);
    if (H + 2 * ph < kh || W + 2 * pw < kw)
        return PyErr_Format(PyExc_ValueError, "conv2d: kernel %ldx%ld larger than the padded input %ldx%ld", kh, kw,
                            H + 2 * ph, W + 2 * pw);
    const long K = kh * kw * cin;
    if (K >= (1L << 24))
        return PyErr_Format(PyExc_ValueError, "conv2d: kh*kw*Cin = %ld must be < 2^24 for exact float results", K);
    if (yfo == Py_None && ypo == Py_None)
        return PyErr_Format(PyExc_ValueError, "conv2d: ask for a float output, a packed output or both");
    const long Ho = (H + 2 * ph - kh) / sh + 1, Wo = (W + 2 * pw - kw) / sw + 1;
    const int wi = (int)((cin + 63) / 64), wout = (int)((cout + 63) / 64);
    const long gpad = lane_groups(cout);
    const long npix = N * Ho * Wo;

    Py_buffer bufs[6];
    int got = 0, fail = 0;
#define GET(obj, wr, kind, need, what)                                        \
    do {                                                                      \
        if (!fail) {                                                          \
            if (get_buf(obj, &bufs[got], wr, kind, need, what) < 0) fail = 1; \
            else got++;                                                       \
        }                                                                     \
    } while (0)
    GET(xo, 0, U64, N * H * W * wi, "conv2d: x");
    GET(wo, 0, U64, gpad * kh * kw * wi * 8, "conv2d: lane weights");
    GET(eo, 0, F32, NAS_EPILOGUE_SLOTS(gpad), "conv2d: epilogue");
    const int ires = got;
    if (ro != Py_None) GET(ro, 0, F32, npix * cout, "conv2d: residual");
    const int iyf = got;
    if (yfo != Py_None) GET(yfo, 1, F32, npix * cout, "conv2d: y_float");
    const int iyp = got;
    if (ypo != Py_None) GET(ypo, 1, U64, npix * wout, "conv2d: y_packed");
#undef GET
    /* one +1 pixel, then (with padding) the padded input */
    const long Hp = H + 2 * ph, Wp = W + 2 * pw;
    const long padwords = ph || pw ? N * Hp * Wp * wi : 0;
    uint64_t *one = fail ? NULL : malloc(sizeof(uint64_t) * (wi + padwords));
    if (fail || !one) {
        for (int i = 0; i < got; i++)
            PyBuffer_Release(&bufs[i]);
        return fail ? NULL : PyErr_NoMemory();
    }
    for (int w = 0; w < wi; w++)
        one[w] = w == wi - 1 && cin % 64 ? (1ULL << (cin % 64)) - 1 : ~0ULL;

    conv_args a = {0};
    a.x = bufs[0].buf;
    a.wi = wi;
    a.kh = (int)kh, a.kw = (int)kw, a.sh = (int)sh, a.sw = (int)sw, a.ph = (int)ph, a.pw = (int)pw;
    a.wl = bufs[1].buf;
    a.cout = (int)cout;
    a.gvalid = (int)((cout + 7) / 8);
    a.gpad = (int)gpad;
    a.K = (int)K;
    a.scale = bufs[2].buf;
    a.bias = a.scale + gpad * 8;
    a.res = ro != Py_None ? bufs[ires].buf : NULL;
    a.yf = yfo != Py_None ? bufs[iyf].buf : NULL;
    a.yp = ypo != Py_None ? (uint8_t *)bufs[iyp].buf : NULL;
    a.wo = wout;
    if (use_thr && !a.res && !a.yf) {
        a.lo = (const int32_t *)(a.bias + gpad * 8);
        a.hi = a.lo + gpad * 8;
        a.neglo = (const int64_t *)(a.hi + gpad * 8);
        a.win = a.neglo + gpad * 8;
    }
    padded pd = {padwords ? one + wi : NULL, padwords ? one + wi : a.x, Hp, Wp};
    if (kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0) {
        /* Pointwise: all N*H*W pixels form one long row (better tiles, e.g. a batched linear). */
        a.N = 1, a.H = 1, a.W = npix, a.Ho = 1, a.Wo = npix;
        pd.Hp = 1, pd.Wp = npix;
    } else {
        a.N = N, a.H = H, a.W = W, a.Ho = Ho, a.Wo = Wo;
    }
    const int nt = clamp_threads(threads);
    Py_BEGIN_ALLOW_THREADS
    run_conv(lv, &a, &pd, one, nt);
    Py_END_ALLOW_THREADS
    free(one);
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&bufs[i]);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ levels */

static PyObject *py_isa(PyObject *self, PyObject *noargs)
{
    const kernel_level *lv = current_level();
    return lv ? PyUnicode_FromString(lv->name) : NULL;
}

static PyObject *py_supported(PyObject *self, PyObject *noargs)
{
    PyObject *t = PyList_New(0);
    for (int i = 0; t && i < N_LEVELS; i++)
        if (level_supported(ALL_LEVELS[i])) {
            PyObject *s = PyUnicode_FromString(ALL_LEVELS[i]->name);
            if (!s || PyList_Append(t, s) < 0) {
                Py_XDECREF(s);
                Py_CLEAR(t);
                break;
            }
            Py_DECREF(s);
        }
    return t;
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg)
{
    if (arg == Py_None) {
        choose_from_env();
        Py_RETURN_NONE;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    const kernel_level *lv = level_by_name(name);
    if (!lv)
        return PyErr_Format(PyExc_ValueError, "set_isa: '%s' is not a kernel level; expected avx512, avx2 or portable",
                            name);
    if (!level_supported(lv))
        return PyErr_Format(PyExc_RuntimeError, "set_isa: this CPU does not support '%s'", name);
    g_level = lv;
    g_error[0] = '\0';
    Py_RETURN_NONE;
}

static PyObject *py_peak(PyObject *self, PyObject *args)
{
    const char *name;
    long reps;
    if (!PyArg_ParseTuple(args, "sl", &name, &reps))
        return NULL;
    const kernel_level *lv = level_by_name(name);
    if (!lv || !level_supported(lv))
        return PyErr_Format(PyExc_ValueError, "peak: level '%s' is not available on this CPU", name);
    struct timespec t0, t1;
    uint64_t sum;
    Py_BEGIN_ALLOW_THREADS
    /* CPU time of this thread: the peak of a core while it runs, not diluted by other
     * processes that take the core away. */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    sum = lv->peak(reps);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
    Py_END_ALLOW_THREADS
    const double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return Py_BuildValue("(ddK)", (double)reps * (double)lv->peak_bits_per_rep, secs, (unsigned long long)sum);
}

static PyObject *py_openmp(PyObject *self, PyObject *noargs)
{
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"isa", py_isa, METH_NOARGS, "isa() -> name of the kernel level in use"},
    {"supported", py_supported, METH_NOARGS, "supported() -> levels this CPU runs, best first"},
    {"set_isa", py_set_isa, METH_O, "set_isa(name | None): force a level; None = NAS_KERNEL_ISA or the best"},
    {"openmp", py_openmp, METH_NOARGS, "openmp() -> True if built with OpenMP threads"},
    {"pack", py_pack, METH_VARARGS, "pack(x_f32, out_u64, rows, C, threads)"},
    {"lane_groups", py_lane_groups, METH_VARARGS, "lane_groups(cout) -> 8-channel groups in the lane layout"},
    {"epilogue", py_epilogue, METH_VARARGS,
     "epilogue(scale, bias, cout, K, out_f32[4 * groups * 8], thresholds) -> thresholds valid"},
    {"repack_weights", py_repack_weights, METH_VARARGS, "repack_weights(w, out, cout, kh, kw, wi)"},
    {"conv2d", py_conv2d, METH_VARARGS,
     "conv2d(x, w_lanes, epilogue, use_thresholds, N, H, W, Cin, Cout, kh, kw, sh, sw, ph, pw, "
     "residual|None, y_float|None, y_packed|None, threads)"},
    {"peak", py_peak, METH_VARARGS, "peak(level, reps) -> (binary_macs, thread_cpu_seconds, checksum)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_binary", "Packed-binary (XNOR-popcount) CPU kernels.", -1, methods,
};

PyMODINIT_FUNC PyInit__binary(void)
{
#ifdef NAS_X86
    __builtin_cpu_init();
#endif
    choose_from_env();
    return PyModule_Create(&moduledef);
}
