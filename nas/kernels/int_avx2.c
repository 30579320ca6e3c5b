/* AVX2 level of the integer kernels (int.h): vpmaddwd on int16 pairs, 16 output channels
 * of a group in two 8-lane int32 accumulators, 4 output pixels per weight load. */
#include "int.h"

#ifdef NAS_INT_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx2")))

#define PB 4 /* output pixels per block */

TGT static void conv_row(const int_args *a, long n, long oy)
{
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
                    _mm256_store_si256((__m256i *)out[i], acc[i][0]);
                    _mm256_store_si256((__m256i *)(out[i] + 8), acc[i][1]);
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
    int32_t out[8] __attribute__((aligned(32)));
    for (long ox = 0; ox < a->Wo; ox++) {
        const long pix = (n * a->Ho + oy) * a->Wo + ox;
        long c = 0;
        for (; c + 8 <= C; c += 8) {
            __m256i acc = _mm256_setzero_si256();
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++) {
                    const int16_t *x = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * C + c;
                    const __m256i xv = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)x));
                    const __m256i wv = _mm256_loadu_si256((const __m256i *)(a->wd + ((long)ky * a->kw + kx) * C + c));
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(xv, wv));
                }
            _mm256_store_si256((__m256i *)out, acc);
            for (int l = 0; l < 8; l++)
                nas_int_store(a, pix, (int)(c + l), out[l]);
        }
        for (; c < C; c++) {
            int32_t acc = 0;
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++)
                    acc += (int32_t)a->xp[((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * C + c]
                           * a->wd[((long)ky * a->kw + kx) * C + c];
            nas_int_store(a, pix, (int)c, acc);
        }
    }
}

/* 8 independent vpmaddwd + vpaddd chains: 8 * 16 int16 MACs per pass. */
TGT static int64_t peak(long reps)
{
    __m256i acc[8];
    const __m256i x = _mm256_set1_epi16(3), w = _mm256_set1_epi16(5);
    for (int i = 0; i < 8; i++)
        acc[i] = _mm256_set1_epi32(i);
    for (long r = 0; r < reps; r++) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(x, w));
        __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[1]), "+x"(acc[2]), "+x"(acc[3]));
    }
    int32_t buf[8] __attribute__((aligned(32)));
    int64_t s = 0;
    for (int i = 0; i < 8; i++) {
        _mm256_store_si256((__m256i *)buf, acc[i]);
        s += buf[0];
    }
    return s;
}

const int_level nas_int_avx2 = {"avx2", conv_row, dw_row, peak, 8 * 16};
#endif
