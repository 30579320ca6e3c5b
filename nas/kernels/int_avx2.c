/* AVX2 level of the integer kernels (int.h): vpmaddwd on int16 pairs, 16 output channels
 * of a group in two 8-lane int32 accumulators, 4 output pixels per weight load. */
#include "int.h"

#ifdef NAS_INT_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx2")))

#define PB 4 /* output pixels per block */

/* nas_int_store on 8 consecutive channels c..c+7 of pixel pix, as float32 vector ops that
 * give the scalar code's results bit for bit: IEEE mul / add / div, max / min whose
 * operand order returns what the scalar ternaries return (including +0.0 for relu(-0.0)),
 * round to nearest even. */
TGT static void store8(const int_args *a, long pix, int c, __m256i acc)
{
    __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(a->scale + c));
    y = _mm256_add_ps(y, _mm256_loadu_ps(a->bias + c));
    const long at = pix * a->cout + c;
    if (a->res)
        y = _mm256_add_ps(y, _mm256_loadu_ps(a->res + at));
    const __m256 zero = _mm256_setzero_ps();
    if (a->act == NAS_ACT_RELU) {
        y = _mm256_max_ps(y, zero); /* y > 0 ? y : +0.0 (max returns its 2nd operand unless y > 0) */
    } else if (a->act == NAS_ACT_HSWISH) {
        __m256 t = _mm256_add_ps(y, _mm256_set1_ps(3.f));
        t = _mm256_max_ps(t, zero);              /* t < 0 ? 0 : t (t is never -0.0: x + 3 != -0) */
        t = _mm256_min_ps(t, _mm256_set1_ps(6.f));
        y = _mm256_div_ps(_mm256_mul_ps(y, t), _mm256_set1_ps(6.f));
    }
    if (a->yc) {
        /* clamp: lo where y < lo, alpha where v > alpha; equal values may differ only in the
         * sign of a zero, which rounds to the same code */
        __m256 v = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(a->q_lo)), _mm256_set1_ps(a->q_alpha));
        v = _mm256_div_ps(v, _mm256_set1_ps(a->q_s));
        int32_t code[8] __attribute__((aligned(32)));
        _mm256_store_si256((__m256i *)code,
                           _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
        for (int l = 0; l < 8; l++)
            a->yc[at + l] = (uint8_t)code[l];
    } else {
        _mm256_storeu_ps(a->yf + at, y);
    }
}

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
                    const long pix = (n * a->Ho + oy) * a->Wo + ox0 + i;
                    if (nl == NAS_INT_LANES) {
                        store8(a, pix, c0, acc[i][0]);
                        store8(a, pix, c0 + 8, acc[i][1]);
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

TGT static void dw_row(const int_args *a, long n, long oy)
{
    const long C = a->cout;
    for (long ox = 0; ox < a->Wo; ox++) {
        const long pix = (n * a->Ho + oy) * a->Wo + ox;
        long c = 0;
        for (; c + 32 <= C; c += 32) { /* 4 independent accumulators hide vpmaddwd's latency */
            __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                              _mm256_setzero_si256()};
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++) {
                    const int16_t *x = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * C + c;
                    const int32_t *w = a->wd + ((long)ky * a->kw + kx) * C + c;
#pragma GCC unroll 4
                    for (int j = 0; j < 4; j++) {
                        const __m256i xv = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(x + 8 * j)));
                        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 8 * j));
                        acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(xv, wv));
                    }
                }
            for (int j = 0; j < 4; j++)
                store8(a, pix, (int)(c + 8 * j), acc[j]);
        }
        for (; c + 8 <= C; c += 8) {
            __m256i acc = _mm256_setzero_si256();
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++) {
                    const int16_t *x = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * C + c;
                    const __m256i xv = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)x));
                    const __m256i wv = _mm256_loadu_si256((const __m256i *)(a->wd + ((long)ky * a->kw + kx) * C + c));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv));
                }
            store8(a, pix, (int)c, acc);
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

/* 8 independent vpmaddwd + vpaddd chains: 8 * 16 int16 MACs per pass (the asm barrier
 * on x keeps the multiply inside the loop). */
TGT static int64_t peak(long reps)
{
    __m256i acc[8];
    __m256i x = _mm256_set1_epi16(3);
    const __m256i w = _mm256_set1_epi16(5);
    for (int i = 0; i < 8; i++)
        acc[i] = _mm256_set1_epi32(i);
    for (long r = 0; r < reps; r++) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(x, w));
        __asm__ volatile("" : "+x"(x));
    }
    int32_t buf[8] __attribute__((aligned(32)));
    int64_t s = 0;
    for (int i = 0; i < 8; i++) {
        _mm256_store_si256((__m256i *)buf, acc[i]);
        s += buf[0];
    }
    return s;
}

const int_level nas_int_avx2 = {.name = "avx2", .conv = conv_row, .dw = dw_row, .peak = peak, .macs_per_rep = 8 * 16};
#endif
