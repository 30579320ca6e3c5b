/* AVX-512 VNNI level of the integer kernels (int.h). Two paths:
 *  - byte path (conv_q): activation codes (signed ones offset by 128) x int8 weights on
 *    vpdpbusd, 64 MACs per instruction; a register block of up to 6 output pixels x 4 lane blocks (64 output
 *    channels), 24 accumulators; 8-bit DoReFa weights split exactly as 2 s + 1 (int.h);
 *  - int16 path (conv, dw): vpdpwssd on int16 pairs (weights with no byte form), 4 output
 *    pixels per weight load; depthwise with channels in lanes.
 * The epilogue is the scalar code's float32 arithmetic as 16-lane vector ops (store16), bit
 * for bit. Runs only where the CPU has AVX-512 F/BW/VL/VNNI. */
#include "int.h"

#ifdef NAS_INT_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

#define PB 4 /* output pixels per block (int16 path) */

/* nas_int_store on the channels c..c+15 of pixel pix selected by m, as float32 vector ops
 * that give the scalar code's results bit for bit: IEEE mul / add / div, compares and blends
 * that return what the scalar ternaries return (+0.0 for relu(-0.0), NaN kept where the
 * scalar keeps it), conversion rounding to nearest even (rintf).
 *
 * The epilogue's per-call constants, read once (stores through the uint8 output may alias
 * anything, so fields read from *a would be reloaded after every store). */
typedef struct ep_consts {
    __m512 lo, al, s;
    const float *scale, *bias, *res;
    float *yf;
    uint8_t *yc;
    long cout;
    int act;
} ep_consts;

TGT static inline ep_consts ep_of(const int_args *a)
{
    ep_consts e = {_mm512_set1_ps(a->q_lo), _mm512_set1_ps(a->q_alpha), _mm512_set1_ps(a->q_s), a->scale, a->bias,
                   a->res, a->yf, a->yc, a->cout, a->act};
    return e;
}

TGT static inline __attribute__((always_inline)) void store16e(const ep_consts *e, long pix, int c, __m512i acc,
                                                                __mmask16 m, __m512 sc, __m512 bi)
{
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), sc);
    y = _mm512_add_ps(y, bi);
    const long at = pix * e->cout + c;
    if (e->res)
        y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, e->res + at));
    const __m512 zero = _mm512_setzero_ps();
    if (e->act == NAS_ACT_RELU) {
        y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ), zero, y); /* y > 0 ? y : 0 */
    } else if (e->act == NAS_ACT_HSWISH) {
        __m512 t = _mm512_add_ps(y, _mm512_set1_ps(3.f));
        t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, zero, _CMP_LT_OQ), t, zero);      /* t < 0 ? 0 : t */
        const __m512 six = _mm512_set1_ps(6.f);
        t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, six, _CMP_GT_OQ), t, six);        /* t > 6 ? 6 : t */
        y = _mm512_div_ps(_mm512_mul_ps(y, t), six);
    }
    if (e->yc) {
        __m512 v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, e->lo, _CMP_LT_OQ), y, e->lo); /* y < lo ? lo : y */
        v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, e->al, _CMP_GT_OQ), v, e->al);       /* v > alpha ? alpha : v */
        v = _mm512_div_ps(v, e->s);
        const __m512i code = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm512_mask_cvtepi32_storeu_epi8(e->yc + at, m, code); /* (uint8_t)(int): the low byte */
    } else {
        _mm512_mask_storeu_ps(e->yf + at, m, y);
    }
}

/* store16e with this call's constants and channel c's scale and bias. */
TGT static inline void store16(const int_args *a, long pix, int c, __m512i acc, __mmask16 m)
{
    const ep_consts e = ep_of(a);
    store16e(&e, pix, c, acc, m, _mm512_maskz_loadu_ps(m, a->scale + c), _mm512_maskz_loadu_ps(m, a->bias + c));
}

static inline __mmask16 lanes(int nl) { return nl >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nl) - 1); }

/* ------------------------------------------------------------------ byte path */

#define QPB 6 /* output pixels per register block */
#define QNB 4 /* lane blocks (16 output channels each) per register block */

/* np pixels (flat indices p..p+np-1) x nbb lane blocks from b0 of group g. Inlined with
 * constant np / nbb so that the accumulators live in registers. */
TGT static inline __attribute__((always_inline)) void q_block(const int_args *a, const ep_consts *e, const long *base,
                                                               const long *pix, int g, int b0, const int np,
                                                               const int nbb)
{
    const long cs = (long)a->G * a->cq;
    const int quads = a->segq;
    const long segw = (long)quads * 64, blkw = (long)a->kh * a->nseg * segw;
    const int8_t *wb = a->wq + ((long)g * a->nb + b0) * blkw;
    __m512i acc[QPB][QNB];
#pragma GCC unroll 6
    for (int i = 0; i < np; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nbb; j++)
            acc[i][j] = _mm512_setzero_si512();
    for (int ky = 0; ky < a->kh; ky++)
        for (int sg = 0; sg < a->nseg; sg++) { /* segment sg of the kernel row: at kx = sg when nseg = kw */
            const long tap = ((long)ky * a->Wp + sg) * cs + (long)g * a->cq;
            const int8_t *w = wb + ((long)ky * a->nseg + sg) * segw;
            const uint8_t *xb[QPB];
#pragma GCC unroll 6
            for (int i = 0; i < np; i++)
                xb[i] = a->xq + base[i] + tap;
            for (int q = 0; q < quads; q++, w += 64) {
                __m512i wv[QNB];
#pragma GCC unroll 4
                for (int j = 0; j < nbb; j++)
                    wv[j] = _mm512_loadu_si512((const void *)(w + j * blkw));
#pragma GCC unroll 6
                for (int i = 0; i < np; i++) {
                    int32_t v;
                    __builtin_memcpy(&v, xb[i] + 4 * q, 4);
                    const __m512i xv = _mm512_set1_epi32(v);
#pragma GCC unroll 4
                    for (int j = 0; j < nbb; j++)
                        acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[j]);
                }
            }
        }
    __m512i corr[QPB];
#pragma GCC unroll 6
    for (int i = 0; i < np; i++) {
        corr[i] = a->split ? _mm512_set1_epi32(a->psum[pix[i] * a->G + g]) : _mm512_setzero_si512();
    }
#pragma GCC unroll 4
    for (int j = 0; j < nbb; j++) {
        const int bo = (b0 + j) * NAS_INT_LANES, c = g * a->cout_g + bo;
        const __mmask16 m = lanes(a->cout_g - bo);
        const __m512 sc = _mm512_maskz_loadu_ps(m, e->scale + c), bi = _mm512_maskz_loadu_ps(m, e->bias + c);
        const __m512i wc = a->wcorr ? _mm512_maskz_loadu_epi32(m, a->wcorr + c) : _mm512_setzero_si512();
#pragma GCC unroll 6
        for (int i = 0; i < np; i++) {
            __m512i v = _mm512_add_epi32(acc[i][j], wc); /* signed codes ran as x + 128 */
            if (a->split)
                v = _mm512_add_epi32(_mm512_slli_epi32(v, 1), corr[i]);
            store16e(e, pix[i], c, v, m, sc, bi);
        }
    }
}

#define QCASE(B, P) \
    case (B) * 8 + (P): q_block(a, &e, bs, px, g, b0, P, B); break;

/* Pixels p0..p1-1 (at most QCHUNK): each lane-block group's weights are read once for all
 * the chunk's register blocks (a 3x3x512 layer's weights are 2.4 MB: streaming them once
 * per 6 pixels would leave the cache). */
#define QCHUNK 48
TGT static void conv_q(const int_args *a, long p0, long p1)
{
    const ep_consts e = ep_of(a);
    const long cs = (long)a->G * a->cq, hw = a->Ho * a->Wo;
    long base[QCHUNK], pix[QCHUNK];
    const int npx = (int)(p1 - p0);
    for (int i = 0; i < npx; i++) {
        const long f = p0 + i, n = f / hw, oy = f % hw / a->Wo, ox = f % a->Wo;
        pix[i] = f;
        base[i] = ((n * a->Hp + oy * a->sh) * a->Wp + ox * a->sw) * cs; /* input of tap (0, 0) */
    }
    for (int g = 0; g < a->G; g++)
        for (int b0 = 0; b0 < a->nb; b0 += QNB) {
            const int nbb = a->nb - b0 < QNB ? a->nb - b0 : QNB;
            for (int i0 = 0; i0 < npx; i0 += QPB) {
                const int np = npx - i0 < QPB ? npx - i0 : QPB;
                const long *bs = base + i0, *px = pix + i0;
                switch (nbb * 8 + np) {
                    QCASE(1, 1) QCASE(1, 2) QCASE(1, 3) QCASE(1, 4) QCASE(1, 5) QCASE(1, 6)
                    QCASE(2, 1) QCASE(2, 2) QCASE(2, 3) QCASE(2, 4) QCASE(2, 5) QCASE(2, 6)
                    QCASE(3, 1) QCASE(3, 2) QCASE(3, 3) QCASE(3, 4) QCASE(3, 5) QCASE(3, 6)
                    QCASE(4, 1) QCASE(4, 2) QCASE(4, 3) QCASE(4, 4) QCASE(4, 5) QCASE(4, 6)
                }
            }
        }
}

/* nas_int_requant over a float32 array, 16 lanes at a time (the same compares, blends,
 * IEEE division and round-to-nearest-even as store16e's requantization). */
TGT static void quantize(const float *x, long n, float lo, float alpha, float s, uint8_t *codes)
{
    const __m512 lov = _mm512_set1_ps(lo), alv = _mm512_set1_ps(alpha), sv = _mm512_set1_ps(s);
    for (long i = 0; i < n; i += 16) {
        const __mmask16 m = lanes((int)(n - i < 16 ? n - i : 16));
        const __m512 y = _mm512_maskz_loadu_ps(m, x + i);
        __m512 v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, lov, _CMP_LT_OQ), y, lov);
        v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, alv, _CMP_GT_OQ), v, alv);
        v = _mm512_div_ps(v, sv);
        _mm512_mask_cvtepi32_storeu_epi8(codes + i, m, _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
}

/* Channel sums of byte codes: vpsadbw against zero adds 8 bytes into each 64-bit lane. */
TGT static void byte_sums(const uint8_t *x, long np, long n, int32_t *out)
{
    const __m512i zero = _mm512_setzero_si512();
    for (long p = 0; p < np; p++) {
        const uint8_t *r = x + p * n;
        __m512i acc = zero;
        long c = 0;
        for (; c + 64 <= n; c += 64)
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_loadu_si512((const void *)(r + c)), zero));
        if (c < n)
            acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(~0ULL >> (64 - (n - c)), r + c), zero));
        out[p] = (int32_t)_mm512_reduce_add_epi64(acc);
    }
}

/* ------------------------------------------------------------------ int16 path */

TGT static void conv_row(const int_args *a, long n, long oy)
{
    const long cstride = (long)a->G * a->cpad;
    const int pairs = a->cpad / 2;
    const long tapw = (long)pairs * NAS_INT_LANES * 2;
    for (int g = 0; g < a->G; g++)
        for (int b = 0; b < a->nb; b++) {
            const int16_t *wb = a->wl + ((long)g * a->nb + b) * a->kh * a->kw * tapw;
            const int c0 = g * a->cout_g + b * NAS_INT_LANES;
            const int nl = a->cout_g - b * NAS_INT_LANES < NAS_INT_LANES ? a->cout_g - b * NAS_INT_LANES
                                                                            : NAS_INT_LANES;
            for (long ox0 = 0; ox0 < a->Wo; ox0 += PB) {
                const int np = a->Wo - ox0 < PB ? (int)(a->Wo - ox0) : PB;
                __m512i acc[PB];
                for (int i = 0; i < PB; i++)
                    acc[i] = _mm512_setzero_si512();
                for (int ky = 0; ky < a->kh; ky++)
                    for (int kx = 0; kx < a->kw; kx++) {
                        const int16_t *w = wb + ((long)ky * a->kw + kx) * tapw;
                        const int16_t *x0 = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox0 * a->sw + kx) * cstride
                                            + (long)g * a->cpad;
                        const long ps = (long)a->sw * cstride;
                        if (np == PB) {
                            for (int p = 0; p < pairs; p++, w += NAS_INT_LANES * 2) {
                                const __m512i wv = _mm512_loadu_si512((const void *)w);
#pragma GCC unroll 4
                                for (int i = 0; i < PB; i++) {
                                    int32_t v;
                                    __builtin_memcpy(&v, x0 + i * ps + 2 * p, 4);
                                    acc[i] = _mm512_dpwssd_epi32(acc[i], _mm512_set1_epi32(v), wv);
                                }
                            }
                        } else {
                            for (int p = 0; p < pairs; p++, w += NAS_INT_LANES * 2) {
                                const __m512i wv = _mm512_loadu_si512((const void *)w);
                                for (int i = 0; i < np; i++) {
                                    int32_t v;
                                    __builtin_memcpy(&v, x0 + i * ps + 2 * p, 4);
                                    acc[i] = _mm512_dpwssd_epi32(acc[i], _mm512_set1_epi32(v), wv);
                                }
                            }
                        }
                    }
                for (int i = 0; i < np; i++)
                    store16(a, (n * a->Ho + oy) * a->Wo + ox0 + i, c0, acc[i], lanes(nl));
            }
        }
}

/* Depthwise: channels in lanes (16 per vector, the last block masked), 4 output pixels per
 * weight load, so that four independent vpdpwssd chains hide its latency; the sign-extended
 * int16 input against int32 weight slots (int16 code low, 0 high) gives exactly x * w. */
#define DPB 4
TGT static void dw_row(const int_args *a, long n, long oy)
{
    const long C = a->cout;
    for (long c = 0; c < C; c += 16) {
        const __mmask16 m = lanes((int)(C - c));
        for (long ox0 = 0; ox0 < a->Wo; ox0 += DPB) {
            const int np = a->Wo - ox0 < DPB ? (int)(a->Wo - ox0) : DPB;
            __m512i acc[DPB] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                                _mm512_setzero_si512()};
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++) {
                    const __m512i wv = _mm512_maskz_loadu_epi32(m, a->wd + ((long)ky * a->kw + kx) * C + c);
                    const int16_t *x = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox0 * a->sw + kx) * C + c;
                    const long ps = (long)a->sw * C;
#pragma GCC unroll 4
                    for (int i = 0; i < DPB; i++)
                        if (i < np)
                            acc[i] = _mm512_dpwssd_epi32(
                                acc[i], _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, x + i * ps)), wv);
                }
            for (int i = 0; i < np; i++)
                store16(a, (n * a->Ho + oy) * a->Wo + ox0 + i, (int)c, acc[i], m);
        }
    }
}

/* 8 independent vpdpwssd chains: 8 * 32 int16 MACs per pass. */
TGT static int64_t peak(long reps)
{
    __m512i acc[8];
    const __m512i x = _mm512_set1_epi16(3), w = _mm512_set1_epi16(5);
    for (int i = 0; i < 8; i++)
        acc[i] = _mm512_set1_epi32(i);
    for (long r = 0; r < reps; r++) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            acc[i] = _mm512_dpwssd_epi32(acc[i], x, w);
        __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]));
    }
    int32_t buf[16] __attribute__((aligned(64)));
    int64_t s = 0;
    for (int i = 0; i < 8; i++) {
        _mm512_store_si512((void *)buf, acc[i]);
        s += buf[0];
    }
    return s;
}

/* 12 independent vpdpbusd chains in named registers (an array would be kept in memory):
 * 12 * 64 u8 x s8 MACs per pass. */
TGT static int64_t peak_q(long reps)
{
    const __m512i x = _mm512_set1_epi8(3), w = _mm512_set1_epi8(5);
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2),
            a3 = _mm512_set1_epi32(3), a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5),
            a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7), a8 = _mm512_set1_epi32(8),
            a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
    for (long r = 0; r < reps; r++) {
#define DP(v) v = _mm512_dpbusd_epi32(v, x, w)
        DP(a0); DP(a1); DP(a2); DP(a3); DP(a4); DP(a5); DP(a6); DP(a7); DP(a8); DP(a9); DP(a10); DP(a11);
#undef DP
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3));
    }
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                       _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)),
                                                        _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11))));
    return _mm512_reduce_add_epi32(s);
}

const int_level nas_int_avx512 = {.name = "avx512", .conv = conv_row, .dw = dw_row, .peak = peak,
                                  .macs_per_rep = 8 * 32, .conv_q = conv_q, .quantize = quantize, .byte_sums = byte_sums, .peak_q = peak_q,
                                  .macs_per_rep_q = 12 * 64, .q_wmax = 128, .q_split = 1};
#endif
