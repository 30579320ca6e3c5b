/* nas.kernels._int: CPython binding, ISA dispatch and threaded driver of the integer
 * (2..8-bit) conv kernels. The Python-facing layer is nas/kernels/integer.py; it allocates
 * every output and passes numpy arrays; this module checks each buffer's item type and size
 * before touching it and releases the GIL while it computes.
 *
 * Dispatch as nas.kernels._binary: AVX-512 VNNI -> AVX2 -> portable, chosen at import from
 * the CPU, or forced with NAS_KERNEL_ISA=avx512|avx2|portable (a level the CPU lacks is an
 * error at the first kernel call), or at run time with set_isa().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "int.h"

static const int_level *g_level = NULL;
static char g_error[256];

static int level_supported(const int_level *lv)
{
#ifdef NAS_INT_X86
    if (lv == &nas_int_avx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    if (lv == &nas_int_avx2)
        return __builtin_cpu_supports("avx2");
#endif
    return lv == &nas_int_portable;
}

static const int_level *const ALL_LEVELS[] = {
#ifdef NAS_INT_X86
    &nas_int_avx512, &nas_int_avx2,
#endif
    &nas_int_portable,
};
#define N_LEVELS ((int)(sizeof(ALL_LEVELS) / sizeof(ALL_LEVELS[0])))

static const int_level *level_by_name(const char *name)
{
    for (int i = 0; i < N_LEVELS; i++)
        if (strcmp(ALL_LEVELS[i]->name, name) == 0)
            return ALL_LEVELS[i];
    return NULL;
}

static const int_level *best_level(void)
{
    for (int i = 0; i < N_LEVELS; i++)
        if (level_supported(ALL_LEVELS[i]))
            return ALL_LEVELS[i];
    return &nas_int_portable;
}

static void choose(const char *name, const char *source)
{
    g_error[0] = '\0';
    g_level = NULL;
    if (!name || !*name) {
        g_level = best_level();
        return;
    }
    const int_level *lv = level_by_name(name);
    if (!lv)
        snprintf(g_error, sizeof g_error, "%s%.40s is not a kernel level; expected avx512, avx2 or portable", source,
                 name);
    else if (!level_supported(lv))
        snprintf(g_error, sizeof g_error, "%s%.40s but this CPU does not support it (best here: %s)", source, name,
                 best_level()->name);
    else
        g_level = lv;
}

static const int_level *current_level(void)
{
    if (!g_level)
        PyErr_SetString(PyExc_RuntimeError, g_error);
    return g_level;
}

/* ------------------------------------------------------------------ buffers */

/* A C-contiguous buffer with items of `itemsize` bytes whose format is one of `formats`,
 * holding exactly `need` items. On failure sets an exception naming `what`, returns -1. */
static int get_buf(PyObject *o, Py_buffer *b, int writable, const char *formats, int itemsize, Py_ssize_t need,
                   const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, b, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous%s array", what, writable ? " writable" : "");
        return -1;
    }
    const char *f = b->format ? b->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    if (!(b->itemsize == itemsize && f[0] && f[1] == '\0' && strchr(formats, f[0]))) {
        PyErr_Format(PyExc_TypeError, "%s: expected items of format '%s' (%d bytes), got '%s'", what, formats, itemsize,
                     b->format ? b->format : "B");
        PyBuffer_Release(b);
        return -1;
    }
    if (b->len != need * b->itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items, got %zd", what, need, b->len / b->itemsize);
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

/* ------------------------------------------------------------------ weights */

static long lane_blocks(long cout_g) { return (cout_g + NAS_INT_LANES - 1) / NAS_INT_LANES; }

/* repack(w (Cout, cin_g, kh, kw) int16, out, cout, cin_g, kh, kw, groups): lane layout. */
static PyObject *py_repack(PyObject *self, PyObject *args)
{
    PyObject *wo, *oo;
    long cout, cin_g, kh, kw, G;
    if (!PyArg_ParseTuple(args, "OOlllll", &wo, &oo, &cout, &cin_g, &kh, &kw, &G))
        return NULL;
    if (cout < 1 || cin_g < 1 || kh < 1 || kw < 1 || G < 1 || cout % G != 0) {
        PyErr_Format(PyExc_ValueError, "repack: bad shape cout=%ld cin_g=%ld kernel=%ldx%ld groups=%ld", cout, cin_g,
                     kh, kw, G);
        return NULL;
    }
    const long cout_g = cout / G, nb = lane_blocks(cout_g), cpad = (cin_g + 1) / 2 * 2, pairs = cpad / 2;
    Py_buffer w, o;
    if (get_buf(wo, &w, 0, "h", 2, cout * cin_g * kh * kw, "repack: w") < 0)
        return NULL;
    if (get_buf(oo, &o, 1, "h", 2, G * nb * kh * kw * pairs * NAS_INT_LANES * 2, "repack: out") < 0) {
        PyBuffer_Release(&w);
        return NULL;
    }
    const int16_t *src = w.buf;
    int16_t *dst = o.buf;
    memset(dst, 0, o.len);
    for (long g = 0; g < G; g++)
        for (long co = 0; co < cout_g; co++) {
            const long b = co / NAS_INT_LANES, l = co % NAS_INT_LANES, c = g * cout_g + co;
            for (long ci = 0; ci < cin_g; ci++)
                for (long ky = 0; ky < kh; ky++)
                    for (long kx = 0; kx < kw; kx++) {
                        const long at = ((((g * nb + b) * kh + ky) * kw + kx) * pairs + ci / 2) * NAS_INT_LANES * 2
                                        + l * 2 + ci % 2;
                        dst[at] = src[((c * cin_g + ci) * kh + ky) * kw + kx];
                    }
        }
    PyBuffer_Release(&w);
    PyBuffer_Release(&o);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ conv */

/* conv2d(x, x_signed, wl, wd, N, H, W, cin, cout, kh, kw, sh, sw, ph, pw, groups, scale, bias,
 *        res, act, yf, yc, q_lo, q_alpha, q_s, threads, wq, split, wsum, wqmax)
 * x (N, H, W, cin) uint8 / int8 codes; wl lane layout (or None with wd (kh, kw, C) int32 for
 * depthwise); res / yf / yc None or arrays; exactly one of yf, yc. wq: the byte lane layout
 * (int.h) or None; split: wq holds s of w_int = 2 s + 1; wsum (cout,) int32: each output
 * channel's sum of byte codes (for signed x); wqmax: the largest |stored byte code| (128 when not
 * given). The byte path runs where the level has one, wq is given and the level's byte path is
 * exact for these codes (int_level.q_wmax, q_split); otherwise the int16 path (same results). */
static PyObject *py_conv2d(PyObject *self, PyObject *args)
{
    PyObject *xo, *wlo, *wdo, *so, *bo, *ro, *yfo, *yco, *wqo = Py_None, *wso = Py_None;
    int x_signed, act, split = 0;
    long N, H, W, cin, cout, kh, kw, sh, sw, ph, pw, G, threads, wqmax = 128;
    float q_lo, q_alpha, q_s;
    if (!PyArg_ParseTuple(args, "OpOOllllllllllllOOOiOOfffl|OpOl", &xo, &x_signed, &wlo, &wdo, &N, &H, &W, &cin, &cout,
                          &kh, &kw, &sh, &sw, &ph, &pw, &G, &so, &bo, &ro, &act, &yfo, &yco, &q_lo, &q_alpha, &q_s,
                          &threads, &wqo, &split, &wso, &wqmax))
        return NULL;
    const int_level *lv = current_level();
    if (!lv)
        return NULL;
    const int dw = wlo == Py_None;
    if (N < 1 || H < 1 || W < 1 || cin < 1 || cout < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 ||
        G < 1 || cin % G || cout % G || (dw && !(G == cin && G == cout)) || act < 0 || act > 2 ||
        (yfo == Py_None) == (yco == Py_None) || (dw && wdo == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "conv2d: inconsistent geometry, weights or outputs");
        return NULL;
    }
    const long Hp = H + 2 * ph, Wp = W + 2 * pw;
    if (Hp < kh || Wp < kw) {
        PyErr_Format(PyExc_ValueError, "conv2d: empty output for input %ldx%ld, kernel %ldx%ld", H, W, kh, kw);
        return NULL;
    }
    const long Ho = (Hp - kh) / sh + 1, Wo = (Wp - kw) / sw + 1;
    const long cin_g = cin / G, cout_g = cout / G, cpad = dw ? 1 : (cin_g + 1) / 2 * 2;
    if (kh * kw * cin_g > 33024) {
        PyErr_Format(PyExc_ValueError, "conv2d: kh*kw*cin_g = %ld exceeds 33024 (int32 accumulators)", kh * kw * cin_g);
        return NULL;
    }
    const long nb = lane_blocks(cout_g), cq = G == 1 ? cin : (cin_g + 3) / 4 * 4;
    const long nseg = G == 1 ? 1 : kw, segq = G == 1 ? (kw * cin + 3) / 4 : cq / 4; /* int.h */
    const int bytes = lv->conv_q && wqo != Py_None && !dw && (!x_signed || wso != Py_None) && wqmax <= lv->q_wmax &&
                      (!split || lv->q_split);
    Py_buffer x, wl = {0}, wd = {0}, s, b, r = {0}, yf = {0}, yc = {0}, wq = {0}, ws = {0};
    int have_wl = 0, have_wd = 0, have_s = 0, have_b = 0, have_r = 0, have_yf = 0, have_yc = 0, have_wq = 0,
        have_ws = 0;
    int32_t *wcorr = NULL;
    PyObject *ret = NULL;
    if (get_buf(xo, &x, 0, x_signed ? "b" : "B", 1, N * H * W * cin, "conv2d: x") < 0)
        return NULL;
    if (!dw && !(have_wl = get_buf(wlo, &wl, 0, "h", 2, G * nb * kh * kw * (cpad / 2) * NAS_INT_LANES * 2,
                                   "conv2d: lane weights") == 0))
        goto done;
    if (dw && !(have_wd = get_buf(wdo, &wd, 0, "i", 4, kh * kw * cout, "conv2d: depthwise weights") == 0))
        goto done;
    if (bytes && !(have_wq = get_buf(wqo, &wq, 0, "b", 1, G * nb * kh * nseg * segq * 4 * NAS_INT_LANES, "conv2d: byte weights") == 0))
        goto done;
    if (bytes && x_signed && !(have_ws = get_buf(wso, &ws, 0, "i", 4, cout, "conv2d: byte weight sums") == 0))
        goto done;
    if (!(have_s = get_buf(so, &s, 0, "f", 4, cout, "conv2d: scale") == 0))
        goto done;
    if (!(have_b = get_buf(bo, &b, 0, "f", 4, cout, "conv2d: bias") == 0))
        goto done;
    if (ro != Py_None && !(have_r = get_buf(ro, &r, 0, "f", 4, N * Ho * Wo * cout, "conv2d: residual") == 0))
        goto done;
    if (yfo != Py_None && !(have_yf = get_buf(yfo, &yf, 1, "f", 4, N * Ho * Wo * cout, "conv2d: yf") == 0))
        goto done;
    if (yco != Py_None && !(have_yc = get_buf(yco, &yc, 1, "bB", 1, N * Ho * Wo * cout, "conv2d: yc") == 0))
        goto done;
    if (have_yc && !(q_s > 0.f) ) {
        PyErr_Format(PyExc_ValueError, "conv2d: requantization scale %g must be > 0", (double)q_s);
        goto done;
    }
    const long cstride = G * cpad;
    int16_t *xp = NULL;
    uint8_t *xq = NULL;
    int32_t *xs = NULL, *hs = NULL, *psum = NULL;
    if (bytes) {
        xq = malloc((size_t)(N * Hp * Wp * G * cq) + 64); /* slack: a row's last quad may read 3 bytes on */
        if (split) { /* channel sums of the padded input, their row box sums, each output's sum */
            xs = malloc((size_t)(N * Hp * Wp * G) * sizeof(int32_t));
            hs = malloc((size_t)(N * Hp * Wo * G) * sizeof(int32_t));
            psum = malloc((size_t)(N * Ho * Wo * G) * sizeof(int32_t));
        }
        wcorr = x_signed ? malloc((size_t)cout * sizeof(int32_t)) : NULL;
    } else {
        xp = calloc((size_t)(N * Hp * Wp * cstride), sizeof(int16_t));
    }
    if (bytes ? (!xq || (split && !(xs && hs && psum)) || (x_signed && !wcorr)) : !xp) {
        free(xq);
        free(xs);
        free(hs);
        free(psum);
        free(wcorr);
        PyErr_NoMemory();
        goto done;
    }
    int_args a = {.xp = xp, .N = N, .Hp = Hp, .Wp = Wp, .Ho = Ho, .Wo = Wo, .G = (int)G, .cin_g = (int)cin_g,
                  .cpad = (int)cpad, .cout = (int)cout, .cout_g = (int)cout_g, .nb = (int)nb, .kh = (int)kh,
                  .kw = (int)kw, .sh = (int)sh, .sw = (int)sw, .wl = have_wl ? wl.buf : NULL,
                  .wd = have_wd ? wd.buf : NULL, .scale = s.buf, .bias = b.buf, .res = have_r ? r.buf : NULL,
                  .act = act, .yf = have_yf ? yf.buf : NULL, .yc = have_yc ? yc.buf : NULL, .q_lo = q_lo,
                  .q_alpha = q_alpha, .q_s = q_s, .xq = xq, .wq = have_wq ? wq.buf : NULL, .psum = psum,
                  .cq = (int)cq, .split = bytes && split, .nseg = (int)nseg, .segq = (int)segq, .wcorr = wcorr,
                  .xcorr = bytes && split && x_signed ? (int32_t)(-128 * kh * kw * cin_g) : 0};
    if (wcorr)
        for (long c = 0; c < cout; c++)
            wcorr[c] = -128 * ((const int32_t *)ws.buf)[c];
    /* padding of the byte path: u = 0 (unsigned) or 128 (signed: x = 0); its channel sums */
    const uint8_t upad = x_signed ? 128 : 0;
    const int32_t spad = x_signed ? (int32_t)(128 * cin_g) : 0;
    if (xq)
        memset(xq + N * Hp * Wp * G * cq, 0, 64);
    const int nt = clamp_threads(threads);
    const void *xb = x.buf;
    const long npix = N * Ho * Wo, chunk = 24 /* <= QCHUNK */, nchunks = (npix + chunk - 1) / chunk;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads(nt)
    {
        if (bytes) {
#pragma omp for schedule(static)
            for (long row = 0; row < N * Hp; row++) { /* padded rows, each written whole */
                const long n = row / Hp, yp = row % Hp, y = yp - ph;
                uint8_t *d = xq + row * Wp * G * cq;
                int32_t *ds = xs ? xs + row * Wp * G : NULL;
                const int inside = y >= 0 && y < H;
                const uint8_t *src = (const uint8_t *)xb + (n * H + (inside ? y : 0)) * W * cin;
                if (G == 1 && inside) { /* cq = cin: the row's pixels are contiguous, padding on both sides */
                    memset(d, upad, (size_t)(pw * cin));
                    uint8_t *di = d + pw * cin;
                    if (upad)
                        for (long i = 0; i < W * cin; i++)
                            di[i] = (uint8_t)(src[i] ^ 0x80); /* signed x + 128 */
                    else
                        memcpy(di, src, (size_t)(W * cin));
                    memset(di + W * cin, upad, (size_t)((Wp - pw - W) * cin));
                    if (ds && lv->byte_sums)
                        lv->byte_sums(d, Wp, cin, ds);
                    else if (ds)
                        for (long xp = 0; xp < Wp; xp++) {
                            int32_t sum = 0;
                            for (long c = 0; c < cin; c++)
                                sum += d[xp * cin + c];
                            ds[xp] = sum;
                        }
                    continue;
                }
                for (long xp = 0; xp < Wp; xp++) {
                    const long xx = xp - pw;
                    const int in = inside && xx >= 0 && xx < W;
                    for (long g = 0; g < G; g++) {
                        uint8_t *dg = d + (xp * G + g) * cq;
                        int32_t sum = 0;
                        if (in) {
                            const uint8_t *sg = src + xx * cin + g * cin_g;
                            for (long c = 0; c < cin_g; c++) {
                                const uint8_t u = (uint8_t)(sg[c] ^ upad); /* signed x + 128 */
                                dg[c] = u;
                                sum += u;
                            }
                        } else {
                            for (long c = 0; c < cin_g; c++)
                                dg[c] = upad;
                            sum = spad;
                        }
                        for (long c = cin_g; c < cq; c++)
                            dg[c] = 0;
                        if (ds)
                            ds[xp * G + g] = sum;
                    }
                }
            }
            if (psum) { /* separable box sums of the channel sums: kw along each row, then kh */
                const int32_t xcorr = a.xcorr;
#pragma omp for schedule(static)
                for (long row = 0; row < N * Hp; row++)
                    for (long ox = 0; ox < Wo; ox++)
                        for (long g = 0; g < G; g++) {
                            int32_t sum = 0;
                            for (long kx = 0; kx < kw; kx++)
                                sum += xs[(row * Wp + ox * sw + kx) * G + g];
                            hs[(row * Wo + ox) * G + g] = sum;
                        }
#pragma omp for schedule(static)
                for (long row = 0; row < N * Ho; row++) {
                    const long n = row / Ho, oy = row % Ho;
                    for (long ox = 0; ox < Wo; ox++)
                        for (long g = 0; g < G; g++) {
                            int32_t sum = xcorr;
                            for (long ky = 0; ky < kh; ky++)
                                sum += hs[((n * Hp + oy * sh + ky) * Wo + ox) * G + g];
                            psum[(row * Wo + ox) * G + g] = sum;
                        }
                }
            }
#pragma omp for schedule(dynamic, 1)
            for (long k = 0; k < nchunks; k++)
                lv->conv_q(&a, k * chunk, k * chunk + chunk < npix ? k * chunk + chunk : npix);
        } else {
#pragma omp for schedule(static)
        for (long row = 0; row < N * H; row++) {
            const long n = row / H, y = row % H;
            int16_t *d = xp + ((n * Hp + y + ph) * Wp + pw) * cstride;
            const long i0 = (n * H + y) * W * cin;
            if (cpad == cin_g) { /* same channel layout: one widening pass over the row */
                if (x_signed)
                    for (long i = 0; i < W * cin; i++)
                        d[i] = ((const int8_t *)xb)[i0 + i];
                else
                    for (long i = 0; i < W * cin; i++)
                        d[i] = ((const uint8_t *)xb)[i0 + i];
                continue;
            }
            for (long xx = 0; xx < W; xx++)
                for (long g = 0; g < G; g++)
                    for (long c = 0; c < cin_g; c++) {
                        const long i = ((n * H + y) * W + xx) * cin + g * cin_g + c;
                        d[xx * cstride + g * cpad + c] = x_signed ? ((const int8_t *)xb)[i] : ((const uint8_t *)xb)[i];
                    }
        }
#pragma omp for schedule(dynamic, 1)
        for (long row = 0; row < N * Ho; row++)
            (dw ? lv->dw : lv->conv)(&a, row / Ho, row % Ho);
        }
    }
    Py_END_ALLOW_THREADS
    free(xq);
    free(xs);
    free(hs);
    free(psum);
    free(wcorr);
    free(xp);
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyBuffer_Release(&x);
    if (have_wl) PyBuffer_Release(&wl);
    if (have_wd) PyBuffer_Release(&wd);
    if (have_s) PyBuffer_Release(&s);
    if (have_b) PyBuffer_Release(&b);
    if (have_r) PyBuffer_Release(&r);
    if (have_yf) PyBuffer_Release(&yf);
    if (have_yc) PyBuffer_Release(&yc);
    if (have_wq) PyBuffer_Release(&wq);
    if (have_ws) PyBuffer_Release(&ws);
    return ret;
}

/* ------------------------------------------------------------------ code movers */

/* shift(x, y, N, H, W, C, offsets, stride): a grouped / sparse shift on NHWC byte codes.
 * offsets: int32 (G, 3) rows (dy, dx, channels) in channel order, channels summing to C;
 * y[n, oy, ox, c] = x[n, oy * s + dy, ox * s + dx, c] for c in the group, 0 outside the map
 * (code 0 is the value 0 for every PACT quantizer). y (N, ceil(H / s), ceil(W / s), C). */
static PyObject *py_shift(PyObject *self, PyObject *args)
{
    PyObject *xo, *yo, *oo;
    long N, H, W, C, s;
    if (!PyArg_ParseTuple(args, "OOllllOl", &xo, &yo, &N, &H, &W, &C, &oo, &s))
        return NULL;
    if (N < 1 || H < 1 || W < 1 || C < 1 || s < 1) {
        PyErr_SetString(PyExc_ValueError, "shift: bad geometry");
        return NULL;
    }
    const long Ho = (H + s - 1) / s, Wo = (W + s - 1) / s;
    Py_buffer x, y, o;
    if (get_buf(xo, &x, 0, "bB", 1, N * H * W * C, "shift: x") < 0)
        return NULL;
    if (get_buf(yo, &y, 1, "bB", 1, N * Ho * Wo * C, "shift: y") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (PyObject_GetBuffer(oo, &o, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&y);
        return NULL;
    }
    const int32_t *off = o.buf;
    const long nrows = o.len / (3 * (long)sizeof(int32_t));
    long total = 0;
    for (long g = 0; g < nrows; g++)
        total += off[3 * g + 2] < 0 ? -1L << 40 : off[3 * g + 2];
    if (o.itemsize != 4 || o.len % (3 * sizeof(int32_t)) || total != C) {
        PyErr_Format(PyExc_ValueError, "shift: offsets must be int32 (groups, 3) rows whose channels sum to %ld", C);
        PyBuffer_Release(&x);
        PyBuffer_Release(&y);
        PyBuffer_Release(&o);
        return NULL;
    }
    const uint8_t *xb = x.buf;
    uint8_t *yb = y.buf;
    Py_BEGIN_ALLOW_THREADS
    for (long n = 0; n < N; n++)
        for (long oy = 0; oy < Ho; oy++)
            for (long ox = 0; ox < Wo; ox++) {
                uint8_t *d = yb + ((n * Ho + oy) * Wo + ox) * C;
                long c0 = 0;
                for (long g = 0; g < nrows; g++) {
                    const long dy = off[3 * g], dx = off[3 * g + 1], nc = off[3 * g + 2];
                    const long iy = oy * s + dy, ix = ox * s + dx;
                    if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                        memcpy(d + c0, xb + ((n * H + iy) * W + ix) * C + c0, (size_t)nc);
                    else
                        memset(d + c0, 0, (size_t)nc);
                    c0 += nc;
                }
            }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    PyBuffer_Release(&o);
    Py_RETURN_NONE;
}

/* gather(x, y, pixels, C, index): y[p, c] = x[p, index[c]] on byte codes; index int32 (C,),
 * a permutation of 0..C-1 (a channel shuffle). */
static PyObject *py_gather(PyObject *self, PyObject *args)
{
    PyObject *xo, *yo, *io;
    long P, C;
    if (!PyArg_ParseTuple(args, "OOllO", &xo, &yo, &P, &C, &io))
        return NULL;
    if (P < 1 || C < 1) {
        PyErr_SetString(PyExc_ValueError, "gather: bad geometry");
        return NULL;
    }
    Py_buffer x, y, ix;
    if (get_buf(xo, &x, 0, "bB", 1, P * C, "gather: x") < 0)
        return NULL;
    if (get_buf(yo, &y, 1, "bB", 1, P * C, "gather: y") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (get_buf(io, &ix, 0, "i", 4, C, "gather: index") < 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&y);
        return NULL;
    }
    const int32_t *idx = ix.buf;
    for (long c = 0; c < C; c++)
        if (idx[c] < 0 || idx[c] >= C) {
            PyErr_Format(PyExc_ValueError, "gather: index[%ld] = %d is outside 0..%ld", c, idx[c], C - 1);
            PyBuffer_Release(&x);
            PyBuffer_Release(&y);
            PyBuffer_Release(&ix);
            return NULL;
        }
    const uint8_t *xb = x.buf;
    uint8_t *yb = y.buf;
    Py_BEGIN_ALLOW_THREADS
    for (long p = 0; p < P; p++)
        for (long c = 0; c < C; c++)
            yb[p * C + c] = xb[p * C + idx[c]];
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    PyBuffer_Release(&ix);
    Py_RETURN_NONE;
}

/* global_pool(x, y, N, P, C): y[n, c] = (x[n, 0, c] + x[n, 1, c] + ... + x[n, P-1, c]) / P in
 * float32, summed in that order (nas.export.packed.FixedOrderAvgPool; the C export's order);
 * x (N, P, C) float32 (NHWC pixels flattened). */
static PyObject *py_global_pool(PyObject *self, PyObject *args)
{
    PyObject *xo, *yo;
    long N, P, C;
    if (!PyArg_ParseTuple(args, "OOlll", &xo, &yo, &N, &P, &C))
        return NULL;
    if (N < 1 || P < 1 || C < 1) {
        PyErr_SetString(PyExc_ValueError, "global_pool: bad geometry");
        return NULL;
    }
    Py_buffer x, y;
    if (get_buf(xo, &x, 0, "f", 4, N * P * C, "global_pool: x") < 0)
        return NULL;
    if (get_buf(yo, &y, 1, "f", 4, N * C, "global_pool: y") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    const float *xb = x.buf;
    float *yb = y.buf;
    Py_BEGIN_ALLOW_THREADS
    for (long n = 0; n < N; n++) {
        float *s = yb + n * C;
        const float *xn = xb + n * P * C;
        for (long c = 0; c < C; c++)
            s[c] = xn[c];
        for (long p = 1; p < P; p++)
            for (long c = 0; c < C; c++)
                s[c] = s[c] + xn[p * C + c];
        for (long c = 0; c < C; c++)
            s[c] = s[c] / (float)P;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    Py_RETURN_NONE;
}

/* quantize(x, codes, n, lo, alpha, s) -> bool: codes[i] = rint(min(max(x[i], lo), alpha) / s)
 * (nas_int_requant) for a float32 array on the level's vector code; False (nothing written)
 * where the level has none. */
static PyObject *py_quantize(PyObject *self, PyObject *args)
{
    PyObject *xo, *co;
    long n;
    float lo, alpha, s;
    if (!PyArg_ParseTuple(args, "OOlfff", &xo, &co, &n, &lo, &alpha, &s))
        return NULL;
    const int_level *lv = current_level();
    if (!lv)
        return NULL;
    if (!lv->quantize)
        Py_RETURN_FALSE;
    if (n < 1 || !(s > 0.f)) {
        PyErr_Format(PyExc_ValueError, "quantize: n=%ld, s=%g: expected n >= 1 and s > 0", n, (double)s);
        return NULL;
    }
    Py_buffer x, c;
    if (get_buf(xo, &x, 0, "f", 4, n, "quantize: x") < 0)
        return NULL;
    if (get_buf(co, &c, 1, "bB", 1, n, "quantize: codes") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    lv->quantize(x.buf, n, lo, alpha, s, c.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
    PyBuffer_Release(&c);
    Py_RETURN_TRUE;
}

/* ------------------------------------------------------------------ dispatch API */

static PyObject *py_isa(PyObject *self, PyObject *noargs)
{
    const int_level *lv = current_level();
    return lv ? PyUnicode_FromString(lv->name) : NULL;
}

static PyObject *py_supported(PyObject *self, PyObject *noargs)
{
    PyObject *l = PyList_New(0);
    for (int i = 0; l && i < N_LEVELS; i++)
        if (level_supported(ALL_LEVELS[i])) {
            PyObject *s = PyUnicode_FromString(ALL_LEVELS[i]->name);
            if (!s || PyList_Append(l, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(l);
                return NULL;
            }
            Py_DECREF(s);
        }
    return l;
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg)
{
    if (arg == Py_None) {
        choose(getenv("NAS_KERNEL_ISA"), "NAS_KERNEL_ISA=");
        Py_RETURN_NONE;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    const int_level *lv = level_by_name(name);
    if (!lv || !level_supported(lv)) {
        PyErr_Format(PyExc_ValueError, "set_isa: %.40s is %s (supported here: best is %s)", name,
                     lv ? "not supported by this CPU" : "not a kernel level", best_level()->name);
        return NULL;
    }
    g_level = lv;
    g_error[0] = '\0';
    Py_RETURN_NONE;
}

/* peak(name, reps[, byte_path]) -> (checksum, macs): the level's multiply-add microkernel, the
 * int16 pairs' or (byte_path) the u8 x s8 one of its byte path. */
static PyObject *py_peak(PyObject *self, PyObject *args)
{
    const char *name;
    long reps;
    int bytes = 0;
    if (!PyArg_ParseTuple(args, "sl|p", &name, &reps, &bytes))
        return NULL;
    const int_level *lv = level_by_name(name);
    if (!lv || !level_supported(lv) || (bytes && !lv->peak_q)) {
        PyErr_Format(PyExc_ValueError, "peak: %.40s is not a kernel level%s this CPU runs", name,
                     bytes ? " with a byte path" : "");
        return NULL;
    }
    int64_t (*fn)(long) = bytes ? lv->peak_q : lv->peak;
    int64_t sum;
    Py_BEGIN_ALLOW_THREADS
    sum = fn(reps);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(Ll)", (long long)sum, reps * (bytes ? lv->macs_per_rep_q : lv->macs_per_rep));
}

/* byte_path() -> bool: whether the level in use has the u8 x s8 byte path. */
static PyObject *py_byte_path(PyObject *self, PyObject *noargs)
{
    const int_level *lv = current_level();
    if (!lv)
        return NULL;
    return PyBool_FromLong(lv->conv_q != NULL);
}

static PyMethodDef methods[] = {
    {"shift", py_shift, METH_VARARGS, "Grouped / sparse shift of NHWC byte codes."},
    {"global_pool", py_global_pool, METH_VARARGS, "Global average pool in a fixed float32 order."},
    {"quantize", py_quantize, METH_VARARGS, "Float32 -> activation codes (the requantization's arithmetic)."},
    {"gather", py_gather, METH_VARARGS, "Channel gather (shuffle) of NHWC byte codes."},
    {"byte_path", py_byte_path, METH_NOARGS, "Whether the level in use has the byte (u8 x s8) path."},
    {"repack", py_repack, METH_VARARGS, "Lane layout of int16 conv weights."},
    {"conv2d", py_conv2d, METH_VARARGS, "Integer conv2d with the fused epilogue."},
    {"isa", py_isa, METH_NOARGS, "Kernel level in use."},
    {"supported", py_supported, METH_NOARGS, "Kernel levels this CPU runs, best first."},
    {"set_isa", py_set_isa, METH_O, "Force a kernel level (None: NAS_KERNEL_ISA / best)."},
    {"peak", py_peak, METH_VARARGS, "Multiply-add peak microkernel of a level."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_int", "Integer (2..8-bit) conv kernels.", -1, methods};

PyMODINIT_FUNC PyInit__int(void)
{
    choose(getenv("NAS_KERNEL_ISA"), "NAS_KERNEL_ISA=");
    return PyModule_Create(&module);
}
