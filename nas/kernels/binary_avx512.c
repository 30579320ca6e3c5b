/* AVX-512 VPOPCNTDQ level of the packed-binary kernels.
 *
 * Direct convolution over packed words (no im2col). One zmm holds the 64-bit weight words
 * of 8 output channels (lane layout); the activation word of a pixel is broadcast to all
 * lanes; xor + vpopcntq + add accumulates per-channel popcounts in 64-bit lanes. A tile
 * is P consecutive output pixels of one row x G groups of 8 channels: P*G accumulators in
 * registers, each weight vector loaded once per tile and reused by P pixels (G = 4, P <= 6:
 * 24 accumulators, 4 weight vectors, a few temporaries in the 32 zmm registers).
 *
 * Epilogues: packed output only (threshold form, binary.h) is one unsigned compare per
 * 8 channels on accumulators started at -lo; otherwise two groups at a time are converted
 * to 16 floats, dot = K - 2*pop, * scale, + bias, + residual, stored, and compared >= 0 for
 * the packed bits. Packed bits of a block's G groups are G consecutive bytes of the pixel's
 * words, written with one store.
 */
#include "binary.h"

#ifdef NAS_X86
#include <immintrin.h>
#include <string.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,fma")))
#define INL static inline __attribute__((always_inline))

#ifndef NAS512_G
#define NAS512_G 4
#endif
#ifndef NAS512_P
#define NAS512_P 6
#endif
enum { G = NAS512_G, PMAX = NAS512_P };
_Static_assert(NAS_GROUP_ALIGN % G == 0 && G % 2 == 0, "G: even, divides NAS_GROUP_ALIGN");

/* One packed word j of every pixel's patch row against G weight vectors: P*G xor + popcount
 * + add, each weight vector loaded once and each activation word broadcast once. */
INL TGT void step(__m512i acc[][G], const uint64_t *xr, const uint64_t *wr, int j, long ps, long gs, const int P)
{
    __m512i w[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; g++)
        w[g] = _mm512_loadu_si512((const void *)(wr + g * gs + j * 8));
#pragma GCC unroll 16
    for (int p = 0; p < P; p++) {
        const __m512i v = _mm512_set1_epi64((long long)xr[p * ps + j]);
#pragma GCC unroll 8
        for (int g = 0; g < G; g++)
            acc[p][g] = _mm512_add_epi64(acc[p][g], _mm512_popcnt_epi64(_mm512_xor_si512(v, w[g])));
    }
}

INL TGT void tile(const conv_args *a, const uint64_t *const *rows, long ps, long p0, long pix0, int g0,
                  const int P)
{
    const int L = a->kw * a->wi;
    const long gs = (long)a->kh * L * 8;
    const uint64_t *wg = a->wl + g0 * gs;
    /* Accumulators start at 0, or at -lo for the threshold form (see binary.h). */
    __m512i acc[PMAX][G], init[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; g++)
        init[g] = a->neglo ? _mm512_loadu_si512((const void *)(a->neglo + (g0 + g) * 8)) : _mm512_setzero_si512();
#pragma GCC unroll 16
    for (int p = 0; p < P; p++)
#pragma GCC unroll 8
        for (int g = 0; g < G; g++)
            acc[p][g] = init[g];

    for (int ky = 0; ky < a->kh; ky++) {
        const uint64_t *xr = rows[ky] + p0 * ps;
        const uint64_t *wr = wg + (long)ky * L * 8;
        for (int j = 0; j < L; j++)
            step(acc, xr, wr, j, ps, gs, P);
    }

    const int bytes = a->wo * 8;
    if (a->win) { /* packed output only: acc = pop - lo, bit = acc <= win unsigned */
        __m512i win[G];
#pragma GCC unroll 8
        for (int g = 0; g < G; g++)
            win[g] = _mm512_loadu_si512((const void *)(a->win + (g0 + g) * 8));
#pragma GCC unroll 16
        for (int p = 0; p < P; p++) {
            __mmask8 k[G];
#pragma GCC unroll 8
            for (int g = 0; g < G; g++)
                k[g] = _mm512_cmple_epu64_mask(acc[p][g], win[g]);
            uint32_t bits; /* byte g = the 8 channels of group g0 + g ("% G" keeps G = 2 in range) */
            if (G == 4)
                bits = _cvtmask32_u32(_mm512_kunpackw(_mm512_kunpackb(k[3 % G], k[2 % G]),
                                                      _mm512_kunpackb(k[1 % G], k[0])));
            else {
                bits = 0;
#pragma GCC unroll 8
                for (int g = 0; g < G; g++)
                    bits |= (uint32_t)k[g] << (8 * g);
            }
            memcpy(a->yp + (pix0 + p) * bytes + g0, &bits, G);
        }
        return;
    }
    /* Float epilogue on 16 channels (two groups) per zmm. pop < 2^24, so the conversion and
     * K - 2*pop are exact (fnmadd rounds once, on an exact integer); then one rounding for
     * *scale and one per add, as in the reference. */
    const __m512 two = _mm512_set1_ps(2.0f), kf = _mm512_set1_ps((float)a->K);
    const __m512 zero = _mm512_setzero_ps();
    const int left = a->cout - g0 * 8; /* valid channels from the block's first one */
#pragma GCC unroll 16
    for (int p = 0; p < P; p++) {
        const long off = (pix0 + p) * a->cout + g0 * 8; /* first channel of the block, NHWC */
        uint32_t bits = 0;
#pragma GCC unroll 4
        for (int h = 0; h < G / 2; h++) {
            const __m512 pop = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtepi64_ps(acc[p][2 * h])),
                                                  _mm512_cvtepi64_ps(acc[p][2 * h + 1]), 1);
            __m512 y = _mm512_fnmadd_ps(pop, two, kf);
            y = _mm512_mul_ps(y, _mm512_loadu_ps(a->scale + g0 * 8 + 16 * h));
            y = _mm512_add_ps(y, _mm512_loadu_ps(a->bias + g0 * 8 + 16 * h));
            __mmask16 m = 0xFFFF;
            if (left >= 16 * (h + 1)) { /* all 16 channels valid: plain loads and stores */
                if (a->res)
                    y = _mm512_add_ps(y, _mm512_loadu_ps(a->res + off + 16 * h));
                if (a->yf)
                    _mm512_storeu_ps(a->yf + off + 16 * h, y);
            } else {
                m = left <= 16 * h ? 0 : (__mmask16)((1u << (left - 16 * h)) - 1);
                if (a->res)
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, a->res + off + 16 * h));
                if (a->yf)
                    _mm512_mask_storeu_ps(a->yf + off + 16 * h, m, y);
            }
            bits |= (uint32_t)(_mm512_cmp_ps_mask(y, zero, _CMP_GE_OQ) & m) << (16 * h);
        }
        if (a->yp)
            memcpy(a->yp + (pix0 + p) * bytes + g0, &bits, G);
    }
}

static TGT void conv_avx512(const conv_args *a, const uint64_t *const *rows, long ps, long npix, long pix0, int g0)
{
    long p = 0;
    long tiles = (npix + PMAX - 1) / PMAX;
    while (p < npix) {
        const int P = (int)((npix - p + tiles - 1) / tiles); /* balanced tile sizes */
        switch (P) { /* a constant P per case: the tile is fully unrolled in registers */
#define CASE(k) case k: tile(a, rows, ps, p, pix0 + p, g0, (k) <= PMAX ? (k) : 1); break;
        CASE(16) CASE(15) CASE(14) CASE(13) CASE(12) CASE(11) CASE(10) CASE(9)
        CASE(8) CASE(7) CASE(6) CASE(5) CASE(4) CASE(3) CASE(2)
#undef CASE
        default: tile(a, rows, ps, p, pix0 + p, g0, 1); break;
        }
        p += P;
        tiles--;
    }
    if (g0 + G >= a->gvalid)
        nas_zero_packed_tail(a, pix0, npix, g0 + G);
}

static TGT void pack_avx512(const float *x, uint64_t *out, long rows, long C)
{
    const long words = (C + 63) / 64;
    const __m512 zero = _mm512_setzero_ps();
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        uint64_t *o = out + r * words;
        long c = 0;
        for (long w = 0; w < words; w++) {
            uint64_t bits = 0;
            for (int k = 0; k < 4 && c < C; k++, c += 16) {
                const long left = C - c;
                const __mmask16 m = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
                const __m512 v = _mm512_maskz_loadu_ps(m, xr + c);
                bits |= (uint64_t)_mm512_mask_cmp_ps_mask(m, v, zero, _CMP_GE_OQ) << (16 * k);
            }
            o[w] = bits;
        }
    }
}

static TGT uint64_t peak_avx512(long reps)
{
    uint64_t buf[64 * 8] __attribute__((aligned(64)));
    for (int i = 0; i < 64 * 8; i++)
        buf[i] = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1);
    const uint64_t *p = buf;
    __m512i acc[16];
    for (int k = 0; k < 16; k++)
        acc[k] = _mm512_setzero_si512();
    __m512i v = _mm512_set1_epi64(0x0123456789ABCDEFLL);
    for (long r = 0; r < reps; r++) {
        __asm__ volatile("" : "+r"(p), "+v"(v)); /* reload the block every pass */
        for (int i = 0; i < 64; i += 16)
#pragma GCC unroll 16
            for (int k = 0; k < 16; k++)
                acc[k] = _mm512_add_epi64(
                    acc[k], _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_load_si512((const void *)(p + (i + k) * 8)), v)));
    }
    __m512i s = acc[0];
    for (int k = 1; k < 16; k++)
        s = _mm512_add_epi64(s, acc[k]);
    return (uint64_t)_mm512_reduce_add_epi64(s);
}

const kernel_level nas_level_avx512 = {
    "avx512", G, conv_avx512, pack_avx512, peak_avx512, 64L * 512,
};
#endif
