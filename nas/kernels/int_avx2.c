/* AVX2 level of the integer kernels (int.h). Three paths:
 *  - byte path (conv_q) for stored codes within +-15 (2- and 4-bit weights, ternary): u8 x s8
 *    on vpmaddubsw, two quads added in int16, widened by vpmaddwd against ones; 16 output
 *    channels x 4 pixels per register block;
 *  - int16 path (conv): vpmaddwd on int16 pairs, 16 output channels of a group in two 8-lane
 *    int32 accumulators, 4 output pixels per weight load (8-bit weights);
 *  - depthwise (dw): two taps per vpmaddwd (the input's and the weights' int16 vectors
 *    interleaved alike), 16 channels x 2 pixels per step.
 * The epilogue is the scalar code's float32 arithmetic as 8-lane vector ops, bit for bit. */
#include "int.h"

#ifdef NAS_INT_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx2")))

#define PB 4 /* output pixels per block */

/* nas_int_store on 8 consecutive channels, as float32 vector ops that give the scalar code's
 * results bit for bit: IEEE mul / add / div, max / min whose operand order returns what the
 * scalar ternaries return (including +0.0 for relu(-0.0)), round to nearest even; codes are
 * the low byte of the rounded int32, as the scalar (uint8_t)(int) cast gives.
 *
 * The epilogue's per-call constants, read once (stores through the uint8 output may alias
 * anything, so fields read from *a would be reloaded after every store). */
typedef struct ep_consts {
    __m256 lo, al, s;
    const float *scale, *bias, *res;
    float *yf;
    uint8_t *yc;
    long cout;
    int act;
} ep_consts;

TGT static inline ep_consts ep_of(const int_args *a)
{
    ep_consts e = {_mm256_set1_ps(a->q_lo), _mm256_set1_ps(a->q_alpha), _mm256_set1_ps(a->q_s), a->scale, a->bias,
                   a->res, a->yf, a->yc, a->cout, a->act};
    return e;
}

/* y = act(acc * scale + bias [+ residual]) of channels c..c+7 at output offset at */
TGT static inline __attribute__((always_inline)) __m256 epilogue8(const ep_consts *e, long at, int c, __m256i acc)
{
    __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(e->scale + c));
    y = _mm256_add_ps(y, _mm256_loadu_ps(e->bias + c));
    if (e->res)
        y = _mm256_add_ps(y, _mm256_loadu_ps(e->res + at));
    const __m256 zero = _mm256_setzero_ps();
    if (e->act == NAS_ACT_RELU) {
        y = _mm256_max_ps(y, zero); /* y > 0 ? y : +0.0 (max returns its 2nd operand unless y > 0) */
    } else if (e->act == NAS_ACT_HSWISH) {
        __m256 t = _mm256_add_ps(y, _mm256_set1_ps(3.f));
        t = _mm256_max_ps(t, zero);              /* t < 0 ? 0 : t (t is never -0.0: x + 3 != -0) */
        t = _mm256_min_ps(t, _mm256_set1_ps(6.f));
        y = _mm256_div_ps(_mm256_mul_ps(y, t), _mm256_set1_ps(6.f));
    }
    return y;
}

/* The next layer's codes of y as int32 lanes 0..255 (the low byte of rint(clamp(y) / s)):
 * clamp to lo where y < lo, alpha where v > alpha (equal values may differ only in the sign of a
 * zero, which rounds to the same code). */
TGT static inline __attribute__((always_inline)) __m256i codes8(const ep_consts *e, __m256 y)
{
    __m256 v = _mm256_min_ps(_mm256_max_ps(y, e->lo), e->al);
    v = _mm256_div_ps(v, e->s);
    /* vcvtps2dq rounds in the current rounding mode, as rintf does (nearest even by default) */
    return _mm256_and_si256(_mm256_cvtps_epi32(v), _mm256_set1_epi32(0xFF));
}

/* Eight codes (int32 lanes 0..255) as eight bytes at p: packing values in 0..255 saturates nothing. */
TGT static inline __attribute__((always_inline)) void put8(uint8_t *p, __m256i q)
{
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64((__m128i *)p, _mm_packus_epi16(w, w));
}

/* Sixteen codes (two vectors of int32 lanes 0..255, channels c..c+7 and c+8..c+15) as sixteen
 * bytes at p, in channel order. */
TGT static inline __attribute__((always_inline)) void put16(uint8_t *p, __m256i q0, __m256i q1)
{
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(q0, q1), 0xD8); /* 16 int16 in order */
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
}

/* store8e on channels c..c+15 (acc0: c..c+7, acc1: c+8..c+15), the codes stored at once */
TGT static inline __attribute__((always_inline)) void store16e(const ep_consts *e, long pix, int c, __m256i acc0,
                                                                __m256i acc1)
{
    const long at = pix * e->cout + c;
    const __m256 y0 = epilogue8(e, at, c, acc0), y1 = epilogue8(e, at + 8, c + 8, acc1);
    if (e->yc) {
        put16(e->yc + at, codes8(e, y0), codes8(e, y1));
    } else {
        _mm256_storeu_ps(e->yf + at, y0);
        _mm256_storeu_ps(e->yf + at + 8, y1);
    }
}

TGT static inline __attribute__((always_inline)) void store8e(const ep_consts *e, long pix, int c, __m256i acc)
{
    const long at = pix * e->cout + c;
    const __m256 y = epilogue8(e, at, c, acc);
    if (e->yc)
        put8(e->yc + at, codes8(e, y));
    else
        _mm256_storeu_ps(e->yf + at, y);
}

TGT static void store8(const int_args *a, long pix, int c, __m256i acc)
{
    const ep_consts e = ep_of(a);
    store8e(&e, pix, c, acc);
}

TGT static void conv_row(const int_args *a, long n, long oy)
{
    const ep_consts e = ep_of(a);
    const long cstride = (long)a->G * a->cpad;
    const int pairs = a->cpad / 2;
    const long tapw = (long)pairs * NAS_INT_LANES * 2;
    int32_t out[PB][NAS_INT_LANES] __attribute__((aligned(32)));
    for (int g = 0; g < a->G; g++)
        for (int b = 0; b < a->nb; b++) {
            const int16_t *wb = a->wl + ((long)g * a->nb + b) * a->kh * a->kw * tapw;
            const int c0 = g * a->cout_g + b * NAS_INT_LANES;
            const int nl = a->cout_g - b * NAS_INT_LANES < NAS_INT_LANES ? a->cout_g - b * NAS_INT_LANES
                                                                            : NAS_INT_LANES;
            for (long ox0 = 0; ox0 < a->Wo; ox0 += PB) {
                const int np = a->Wo - ox0 < PB ? (int)(a->Wo - ox0) : PB;
                __m256i acc[PB][2];
                for (int i = 0; i < PB; i++)
                    acc[i][0] = acc[i][1] = _mm256_setzero_si256();
                for (int ky = 0; ky < a->kh; ky++)
                    for (int kx = 0; kx < a->kw; kx++) {
                        const int16_t *w = wb + ((long)ky * a->kw + kx) * tapw;
                        const int16_t *x0 = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox0 * a->sw + kx) * cstride
                                            + (long)g * a->cpad;
                        const long ps = (long)a->sw * cstride; /* next output pixel's input */
                        if (np == PB) {
                            for (int p = 0; p < pairs; p++, w += NAS_INT_LANES * 2) {
                                const __m256i w0 = _mm256_loadu_si256((const __m256i *)w);
                                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 16));
#pragma GCC unroll 4
                                for (int i = 0; i < PB; i++) {
                                    int32_t v;
                                    __builtin_memcpy(&v, x0 + i * ps + 2 * p, 4);
                                    const __m256i xb = _mm256_set1_epi32(v);
                                    acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(xb, w0));
                                    acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(xb, w1));
                                }
                            }
                        } else {
                            for (int p = 0; p < pairs; p++, w += NAS_INT_LANES * 2) {
                                const __m256i w0 = _mm256_loadu_si256((const __m256i *)w);
                                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 16));
                                for (int i = 0; i < np; i++) {
                                    int32_t v;
                                    __builtin_memcpy(&v, x0 + i * ps + 2 * p, 4);
                                    const __m256i xb = _mm256_set1_epi32(v);
                                    acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(xb, w0));
                                    acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(xb, w1));
                                }
                            }
                        }
                    }
                for (int i = 0; i < np; i++) {
                    const long pix = (n * a->Ho + oy) * a->Wo + ox0 + i;
                    if (nl == NAS_INT_LANES) {
                        store16e(&e, pix, c0, acc[i][0], acc[i][1]);
                        continue;
                    }
                    _mm256_store_si256((__m256i *)out[i], acc[i][0]);
                    _mm256_store_si256((__m256i *)(out[i] + 8), acc[i][1]);
                    int l = 0;
                    if (nl >= 8) {
                        store8(a, pix, c0, acc[i][0]);
                        l = 8;
                    }
                    for (; l < nl; l++)
                        nas_int_store(a, pix, c0 + l, out[i][l]);
                }
            }
        }
}

/* Depthwise. Taps are taken in pairs (t = 2p, 2p + 1; a zero weight past the last): for 16
 * channels of int16 input, vpunpcklwd / vpunpckhwd of the two taps' vectors put (x_t, x_t+1) of
 * channels 0-3, 8-11 / 4-7, 12-15 side by side in each 32-bit lane, and vpmaddwd against the
 * weights unpacked the same way adds both products exactly (|x w| <= 255 * 255). Two output
 * pixels share each weight pair; a 2x128-bit permute puts the channels back in order before the
 * epilogue. Channels past the last 16 go 8 at a time, then one at a time. */
#define DW_MAX_PAIRS 64 /* kernels up to 127 taps; larger ones take the 8-channel loop */
TGT static void dw_row(const int_args *a, long n, long oy)
{
    const ep_consts e = ep_of(a);
    const long C = a->cout, Wo = a->Wo;
    const int K = a->kh * a->kw, npairs = (K + 1) / 2;
    const long ps = (long)a->sw * C; /* next output pixel's input */
    long c = 0;
    if (npairs <= DW_MAX_PAIRS)
        for (; c + 16 <= C; c += 16) {
            __m256i wlo[DW_MAX_PAIRS], whi[DW_MAX_PAIRS];
            const int16_t *xt[2 * DW_MAX_PAIRS]; /* each tap's input at output pixel 0 of this row */
            for (int p = 0; p < npairs; p++) {
                __m256i w2[2];
                for (int j = 0; j < 2; j++) {
                    const int t = 2 * p + j;
                    if (t < K) { /* int32 slots (int16 code low, 0 high) -> 16 int16 codes in channel order */
                        const int32_t *w = a->wd + (long)t * C + c;
                        const __m256i w0 = _mm256_loadu_si256((const __m256i *)w);
                        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 8));
                        w2[j] = _mm256_permute4x64_epi64( /* sign-extended low halves, packed: no saturation */
                            _mm256_packs_epi32(_mm256_srai_epi32(_mm256_slli_epi32(w0, 16), 16),
                                               _mm256_srai_epi32(_mm256_slli_epi32(w1, 16), 16)), 0xD8);
                    } else {
                        w2[j] = _mm256_setzero_si256();
                    }
                    const int tt = t < K ? t : t - 1; /* past the last tap: any input, its weight is 0 */
                    xt[t] = a->xp + ((n * a->Hp + oy * a->sh + tt / a->kw) * a->Wp + tt % a->kw) * C + c;
                }
                wlo[p] = _mm256_unpacklo_epi16(w2[0], w2[1]);
                whi[p] = _mm256_unpackhi_epi16(w2[0], w2[1]);
            }
            long ox = 0;
            for (; ox + 2 <= Wo; ox += 2) {
                __m256i l0 = _mm256_setzero_si256(), h0 = l0, l1 = l0, h1 = l0;
                const long o0 = ox * ps, o1 = o0 + ps;
                for (int p = 0; p < npairs; p++) {
                    const int16_t *xa = xt[2 * p], *xb = xt[2 * p + 1];
                    const __m256i a0 = _mm256_loadu_si256((const __m256i *)(xa + o0));
                    const __m256i b0 = _mm256_loadu_si256((const __m256i *)(xb + o0));
                    const __m256i a1 = _mm256_loadu_si256((const __m256i *)(xa + o1));
                    const __m256i b1 = _mm256_loadu_si256((const __m256i *)(xb + o1));
                    l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, b0), wlo[p]));
                    h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, b0), whi[p]));
                    l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(_mm256_unpacklo_epi16(a1, b1), wlo[p]));
                    h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(_mm256_unpackhi_epi16(a1, b1), whi[p]));
                }
                const long pix = (n * a->Ho + oy) * Wo + ox;
                store16e(&e, pix, (int)c, _mm256_permute2x128_si256(l0, h0, 0x20), _mm256_permute2x128_si256(l0, h0, 0x31));
                store16e(&e, pix + 1, (int)c, _mm256_permute2x128_si256(l1, h1, 0x20),
                         _mm256_permute2x128_si256(l1, h1, 0x31));
            }
            for (; ox < Wo; ox++) {
                __m256i l0 = _mm256_setzero_si256(), h0 = l0;
                const long o0 = ox * ps;
                for (int p = 0; p < npairs; p++) {
                    const __m256i a0 = _mm256_loadu_si256((const __m256i *)(xt[2 * p] + o0));
                    const __m256i b0 = _mm256_loadu_si256((const __m256i *)(xt[2 * p + 1] + o0));
                    l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, b0), wlo[p]));
                    h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, b0), whi[p]));
                }
                const long pix = (n * a->Ho + oy) * Wo + ox;
                store16e(&e, pix, (int)c, _mm256_permute2x128_si256(l0, h0, 0x20), _mm256_permute2x128_si256(l0, h0, 0x31));
            }
        }
    for (long ox = 0; ox < Wo; ox++) {
        const long pix = (n * a->Ho + oy) * Wo + ox;
        long cc = c;
        for (; cc + 8 <= C; cc += 8) {
            __m256i acc = _mm256_setzero_si256();
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++) {
                    const int16_t *x = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * C + cc;
                    const __m256i xv = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)x));
                    const __m256i wv = _mm256_loadu_si256((const __m256i *)(a->wd + ((long)ky * a->kw + kx) * C + cc));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv));
                }
            store8e(&e, pix, (int)cc, acc);
        }
        for (; cc < C; cc++) {
            int32_t acc = 0;
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++)
                    acc += (int32_t)a->xp[((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * C + cc]
                           * (int16_t)a->wd[((long)ky * a->kw + kx) * C + cc];
            nas_int_store(a, pix, (int)cc, acc);
        }
    }
}

/* ------------------------------------------------------------------ byte path */

/* u8 x s8 products on vpmaddubsw, exact only for small weights: vpmaddubsw adds two products
 * into an int16 with saturation, so with |w| <= 15 (2- and 4-bit codes, ternary) and u <= 255
 * two quads' results (four products each lane's int16 holds: 4 * 255 * 15 = 15300 < 2^15)
 * can be added with vpaddw before vpmaddwd against ones widens them to int32. The driver gives
 * this level byte weights only when every stored code is within Q_WMAX and none is split. */
#define Q_WMAX 15
#define QPB2 4 /* output pixels per register block; one lane block (16 channels: 2 x 8 lanes) */

/* One lane block's 16 channels c..c+15 of the np pixels: epilogue, partial blocks lane by lane. */
TGT static inline __attribute__((always_inline)) void q_store(const int_args *a, const ep_consts *e, long pix, int c,
                                                               int nl, __m256i lo, __m256i hi)
{
    if (a->wcorr) { /* signed codes ran as x + 128 */
        int32_t wc[16] = {0};
        for (int l = 0; l < nl; l++)
            wc[l] = a->wcorr[c + l];
        lo = _mm256_add_epi32(lo, _mm256_loadu_si256((const __m256i *)wc));
        hi = _mm256_add_epi32(hi, _mm256_loadu_si256((const __m256i *)(wc + 8)));
    }
    if (nl == 16) {
        store16e(e, pix, c, lo, hi);
        return;
    }
    int32_t out[16] __attribute__((aligned(32)));
    _mm256_store_si256((__m256i *)out, lo);
    _mm256_store_si256((__m256i *)(out + 8), hi);
    int l = 0;
    if (nl >= 8) {
        store8e(e, pix, c, lo);
        l = 8;
    }
    for (; l < nl; l++)
        nas_int_store(a, pix, c + l, out[l]);
}

TGT static inline __attribute__((always_inline)) void q_block2(const int_args *a, const ep_consts *e, const long *base,
                                                                const long *pix, int g, int b, const int np)
{
    const long cs = (long)a->G * a->cq;
    const int quads = a->segq;
    const long segw = (long)quads * 64;
    const int8_t *wb = a->wq + ((long)g * a->nb + b) * a->kh * a->nseg * segw;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i lo[QPB2], hi[QPB2];
#pragma GCC unroll 4
    for (int i = 0; i < np; i++)
        lo[i] = hi[i] = _mm256_setzero_si256();
    for (int ky = 0; ky < a->kh; ky++)
        for (int sg = 0; sg < a->nseg; sg++) {
            const long tap = ((long)ky * a->Wp + sg) * cs + (long)g * a->cq;
            const int8_t *w = wb + ((long)ky * a->nseg + sg) * segw;
            const uint8_t *xb[QPB2];
#pragma GCC unroll 4
            for (int i = 0; i < np; i++)
                xb[i] = a->xq + base[i] + tap;
            int q = 0;
            for (; q + 2 <= quads; q += 2, w += 128) {
                const __m256i w0l = _mm256_loadu_si256((const __m256i *)w), w0h = _mm256_loadu_si256((const __m256i *)(w + 32));
                const __m256i w1l = _mm256_loadu_si256((const __m256i *)(w + 64)), w1h = _mm256_loadu_si256((const __m256i *)(w + 96));
#pragma GCC unroll 4
                for (int i = 0; i < np; i++) {
                    int32_t v0, v1;
                    __builtin_memcpy(&v0, xb[i] + 4 * q, 4);
                    __builtin_memcpy(&v1, xb[i] + 4 * q + 4, 4);
                    const __m256i x0 = _mm256_set1_epi32(v0), x1 = _mm256_set1_epi32(v1);
                    const __m256i tl = _mm256_add_epi16(_mm256_maddubs_epi16(x0, w0l), _mm256_maddubs_epi16(x1, w1l));
                    const __m256i th = _mm256_add_epi16(_mm256_maddubs_epi16(x0, w0h), _mm256_maddubs_epi16(x1, w1h));
                    lo[i] = _mm256_add_epi32(lo[i], _mm256_madd_epi16(tl, ones));
                    hi[i] = _mm256_add_epi32(hi[i], _mm256_madd_epi16(th, ones));
                }
            }
            if (q < quads) {
                const __m256i w0l = _mm256_loadu_si256((const __m256i *)w), w0h = _mm256_loadu_si256((const __m256i *)(w + 32));
#pragma GCC unroll 4
                for (int i = 0; i < np; i++) {
                    int32_t v0;
                    __builtin_memcpy(&v0, xb[i] + 4 * q, 4);
                    const __m256i x0 = _mm256_set1_epi32(v0);
                    lo[i] = _mm256_add_epi32(lo[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x0, w0l), ones));
                    hi[i] = _mm256_add_epi32(hi[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x0, w0h), ones));
                }
            }
        }
    const int bo = b * NAS_INT_LANES, c = g * a->cout_g + bo;
    const int nl = a->cout_g - bo < NAS_INT_LANES ? a->cout_g - bo : NAS_INT_LANES;
#pragma GCC unroll 4
    for (int i = 0; i < np; i++)
        q_store(a, e, pix[i], c, nl, lo[i], hi[i]);
}

#define QCHUNK2 48 /* >= the driver's chunk */
TGT static void conv_q(const int_args *a, long p0, long p1)
{
    const ep_consts e = ep_of(a);
    const long cs = (long)a->G * a->cq, hw = a->Ho * a->Wo;
    long base[QCHUNK2], pix[QCHUNK2];
    const int npx = (int)(p1 - p0);
    for (int i = 0; i < npx; i++) {
        const long f = p0 + i, n = f / hw, oy = f % hw / a->Wo, ox = f % a->Wo;
        pix[i] = f;
        base[i] = ((n * a->Hp + oy * a->sh) * a->Wp + ox * a->sw) * cs; /* input of tap (0, 0) */
    }
    for (int g = 0; g < a->G; g++)
        for (int b = 0; b < a->nb; b++)
            for (int i0 = 0; i0 < npx; i0 += QPB2) {
                const int np = npx - i0 < QPB2 ? npx - i0 : QPB2;
                switch (np) {
                case 1: q_block2(a, &e, base + i0, pix + i0, g, b, 1); break;
                case 2: q_block2(a, &e, base + i0, pix + i0, g, b, 2); break;
                case 3: q_block2(a, &e, base + i0, pix + i0, g, b, 3); break;
                default: q_block2(a, &e, base + i0, pix + i0, g, b, 4); break;
                }
            }
}

/* nas_int_requant over a float32 array, 8 lanes at a time: the scalar ternaries as compares
 * and blends (NaN and signed zeros as the scalar code has them), IEEE division, round to nearest
 * even, the low byte of the int32. The tail of n % 8 values runs the scalar code. */
TGT static void quantize(const float *x, long n, float lo, float alpha, float s, uint8_t *codes)
{
    const __m256 lov = _mm256_set1_ps(lo), alv = _mm256_set1_ps(alpha), sv = _mm256_set1_ps(s);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 y = _mm256_loadu_ps(x + i);
        __m256 v = _mm256_blendv_ps(y, lov, _mm256_cmp_ps(y, lov, _CMP_LT_OQ)); /* y < lo ? lo : y */
        v = _mm256_blendv_ps(v, alv, _mm256_cmp_ps(v, alv, _CMP_GT_OQ));        /* v > alpha ? alpha : v */
        v = _mm256_div_ps(v, sv);
        /* vcvtps2dq rounds in the current rounding mode, as rintf does */
        put8(codes + i, _mm256_and_si256(_mm256_cvtps_epi32(v), _mm256_set1_epi32(0xFF)));
    }
    for (; i < n; i++)
        codes[i] = nas_int_requant(x[i], lo, alpha, s);
}

/* 8 independent multiply-add chains: int16 pairs, vpmaddwd + vpaddd, 8 * 16 MACs per pass; or
 * (bytes) the byte path's own mix, two vpmaddubsw added in int16, vpmaddwd against ones, vpaddd:
 * 8 * 64 u8 x s8 MACs per pass. Inlined with a constant `bytes`, so each microkernel is its
 * own loop. */
TGT static inline __attribute__((always_inline)) int64_t peak_chains(long reps, const int bytes)
{
    __m256i x = bytes ? _mm256_set1_epi8(3) : _mm256_set1_epi16(3);
    const __m256i w = bytes ? _mm256_set1_epi8(5) : _mm256_set1_epi16(5), ones = _mm256_set1_epi16(1);
    /* named accumulators: an array would be kept in memory */
    __m256i a0 = _mm256_set1_epi32(0), a1 = _mm256_set1_epi32(1), a2 = _mm256_set1_epi32(2),
            a3 = _mm256_set1_epi32(3), a4 = _mm256_set1_epi32(4), a5 = _mm256_set1_epi32(5),
            a6 = _mm256_set1_epi32(6), a7 = _mm256_set1_epi32(7);
    for (long r = 0; r < reps; r++) {
        /* the asm barrier makes x new before each product, so the compiler neither computes the
         * eight identical products once nor moves them out of the loop */
#define MA(v)                                                                                              \
    do {                                                                                                   \
        __asm__ volatile("" : "+x"(x));                                                                    \
        __m256i p = _mm256_madd_epi16(x, w);                                                               \
        if (bytes) {                                                                                       \
            const __m256i p0 = _mm256_maddubs_epi16(x, w);                                                 \
            __asm__ volatile("" : "+x"(x));                                                                \
            p = _mm256_madd_epi16(_mm256_add_epi16(p0, _mm256_maddubs_epi16(x, w)), ones);                 \
        }                                                                                                  \
        v = _mm256_add_epi32(v, p);                                                                        \
    } while (0)
        MA(a0); MA(a1); MA(a2); MA(a3); MA(a4); MA(a5); MA(a6); MA(a7);
#undef MA
    }
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)),
                                       _mm256_add_epi32(_mm256_add_epi32(a4, a5), _mm256_add_epi32(a6, a7)));
    int32_t buf[8] __attribute__((aligned(32)));
    _mm256_store_si256((__m256i *)buf, s);
    return (int64_t)buf[0];
}

TGT static int64_t peak(long reps) { return peak_chains(reps, 0); }
TGT static int64_t peak_q(long reps) { return peak_chains(reps, 1); }

const int_level nas_int_avx2 = {.name = "avx2", .conv = conv_row, .dw = dw_row, .peak = peak, .macs_per_rep = 8 * 16,
                                .quantize = quantize, .conv_q = conv_q, .peak_q = peak_q, .macs_per_rep_q = 8 * 64,
                                .q_wmax = Q_WMAX, .q_split = 0};
#endif
