/* AVX-512 VNNI level of the integer kernels (int.h): vpdpwssd (int16 pairs multiplied and
 * added into int32, no saturation) with the 16 output channels of a group in one vector,
 * 4 output pixels per weight load. Runs only where the CPU has AVX-512 F/BW/VNNI. */
#include "int.h"

#ifdef NAS_INT_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

#define PB 4 /* output pixels per block */

TGT static void conv_row(const int_args *a, long n, long oy)
{
    const long cstride = (long)a->G * a->cpad;
    const int pairs = a->cpad / 2;
    const long tapw = (long)pairs * NAS_INT_LANES * 2;
    int32_t out[PB][NAS_INT_LANES] __attribute__((aligned(64)));
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
                for (int i = 0; i < np; i++) {
                    _mm512_store_si512((void *)out[i], acc[i]);
                    const long pix = (n * a->Ho + oy) * a->Wo + ox0 + i;
                    for (int l = 0; l < nl; l++)
                        nas_int_store(a, pix, c0 + l, out[i][l]);
                }
            }
        }
}

TGT static void dw_row(const int_args *a, long n, long oy)
{
    const long C = a->cout;
    int32_t out[16] __attribute__((aligned(64)));
    for (long ox = 0; ox < a->Wo; ox++) {
        const long pix = (n * a->Ho + oy) * a->Wo + ox;
        long c = 0;
        for (; c + 16 <= C; c += 16) {
            __m512i acc = _mm512_setzero_si512();
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++) {
                    const int16_t *x = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * C + c;
                    const __m512i xv = _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)x));
                    const __m512i wv = _mm512_loadu_si512((const void *)(a->wd + ((long)ky * a->kw + kx) * C + c));
                    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(xv, wv));
                }
            _mm512_store_si512((void *)out, acc);
            for (int l = 0; l < 16; l++)
                nas_int_store(a, pix, (int)(c + l), out[l]);
        }
        for (; c < C; c++) {
            int32_t acc = 0;
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++)
                    acc += (int32_t)a->xp[((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * C + c]
                           * (int16_t)a->wd[((long)ky * a->kw + kx) * C + c];
            nas_int_store(a, pix, (int)c, acc);
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

const int_level nas_int_avx512 = {"avx512", conv_row, dw_row, peak, 8 * 32};
#endif
