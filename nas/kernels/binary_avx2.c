/* AVX2 level of the packed-binary kernels (no vector popcount instruction).
 *
 * Same tiling as the AVX-512 level with one group of 8 output channels (two ymm of four
 * 64-bit lanes) per block. Popcount is the nibble lookup with vpshufb: per-byte counts are
 * summed in byte accumulators for at most 31 words (31 * 8 < 256), then folded into 64-bit
 * lanes with vpsadbw, which sums exactly the 8 bytes of one output channel's lane.
 */
#include "binary.h"

#ifdef NAS_X86
#include <immintrin.h>
#include <string.h>

#define TGT __attribute__((target("avx2,popcnt")))
#define INL static inline __attribute__((always_inline))

enum { PMAX = 4, FLUSH = 31 };

INL TGT __m256i nibble_popcount(__m256i v, __m256i lut, __m256i low)
{
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

INL TGT void tile(const conv_args *a, const uint64_t *const *rows, long ps, long p0, long pix0, int g0,
                  const int P)
{
    const int L = a->kw * a->wi;
    const long gs = (long)a->kh * L * 8;
    const uint64_t *wg = a->wl + g0 * gs;
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    __m256i acc8[PMAX][2], acc64[PMAX][2];
#pragma GCC unroll 4
    for (int p = 0; p < P; p++)
        for (int h = 0; h < 2; h++)
            acc8[p][h] = acc64[p][h] = zero;

    int since_flush = 0;
    for (int ky = 0; ky < a->kh; ky++) {
        const uint64_t *xr = rows[ky] + p0 * ps;
        const uint64_t *wr = wg + (long)ky * L * 8;
        for (int j = 0; j < L; j++) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wr + j * 8));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wr + j * 8 + 4));
#pragma GCC unroll 4
            for (int p = 0; p < P; p++) {
                const __m256i v = _mm256_set1_epi64x((long long)xr[p * ps + j]);
                acc8[p][0] = _mm256_add_epi8(acc8[p][0], nibble_popcount(_mm256_xor_si256(v, w0), lut, low));
                acc8[p][1] = _mm256_add_epi8(acc8[p][1], nibble_popcount(_mm256_xor_si256(v, w1), lut, low));
            }
            if (++since_flush == FLUSH) {
#pragma GCC unroll 4
                for (int p = 0; p < P; p++)
                    for (int h = 0; h < 2; h++) {
                        acc64[p][h] = _mm256_add_epi64(acc64[p][h], _mm256_sad_epu8(acc8[p][h], zero));
                        acc8[p][h] = zero;
                    }
                since_flush = 0;
            }
        }
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; p++)
        for (int h = 0; h < 2; h++)
            acc64[p][h] = _mm256_add_epi64(acc64[p][h], _mm256_sad_epu8(acc8[p][h], zero));

    const int c0 = g0 * 8;
    const int left = a->cout - c0;
    const int bytes = a->wo * 8;
    const __m256 sc = _mm256_loadu_ps(a->scale + c0), bi = _mm256_loadu_ps(a->bias + c0);
    const __m256i kk = _mm256_set1_epi32(a->K);
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i lo = a->lo ? _mm256_loadu_si256((const __m256i *)(a->lo + c0)) : kk;
    const __m256i hi = a->hi ? _mm256_loadu_si256((const __m256i *)(a->hi + c0)) : kk;
#pragma GCC unroll 4
    for (int p = 0; p < P; p++) {
        const long pix = pix0 + p;
        /* lanes (c0..c3) and (c4..c7) as int64 -> 8 x int32 in channel order; pop < 2^24. */
        const __m256i mixed = _mm256_blend_epi32(acc64[p][0], _mm256_slli_epi64(acc64[p][1], 32), 0xAA);
        const __m256i pop = _mm256_permutevar8x32_epi32(mixed, order);
        if (a->lo) { /* threshold form, packed output only: lo <= pop <= hi */
            const __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(lo, pop), _mm256_cmpgt_epi32(pop, hi));
            a->yp[pix * bytes + g0] = (uint8_t)~_mm256_movemask_ps(_mm256_castsi256_ps(out));
            continue;
        }
        __m256 y = _mm256_cvtepi32_ps(_mm256_sub_epi32(kk, _mm256_slli_epi32(pop, 1)));
        y = _mm256_mul_ps(y, sc);
        y = _mm256_add_ps(y, bi);
        unsigned mask;
        if (left >= 8) {
            if (a->res)
                y = _mm256_add_ps(y, _mm256_loadu_ps(a->res + pix * a->cout + c0));
            if (a->yf)
                _mm256_storeu_ps(a->yf + pix * a->cout + c0, y);
            mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GE_OQ));
        } else { /* channel tail: go through a small buffer */
            float t[8] = {0};
            const int nv = left > 0 ? left : 0;
            if (a->res) {
                memcpy(t, a->res + pix * a->cout + c0, sizeof(float) * nv);
                y = _mm256_add_ps(y, _mm256_loadu_ps(t));
            }
            _mm256_storeu_ps(t, y);
            if (a->yf)
                memcpy(a->yf + pix * a->cout + c0, t, sizeof(float) * nv);
            mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GE_OQ));
            mask &= (1u << nv) - 1;
        }
        if (a->yp)
            a->yp[pix * bytes + g0] = (uint8_t)mask;
    }
}

static TGT void conv_avx2(const conv_args *a, const uint64_t *const *rows, long ps, long npix, long pix0, int g0)
{
    long p = 0;
    long tiles = (npix + PMAX - 1) / PMAX;
    while (p < npix) {
        const int P = (int)((npix - p + tiles - 1) / tiles); /* balanced tile sizes */
        switch (P) {
        case 4: tile(a, rows, ps, p, pix0 + p, g0, 4); break;
        case 3: tile(a, rows, ps, p, pix0 + p, g0, 3); break;
        case 2: tile(a, rows, ps, p, pix0 + p, g0, 2); break;
        default: tile(a, rows, ps, p, pix0 + p, g0, 1); break;
        }
        p += P;
        tiles--;
    }
    if (g0 + 1 >= a->gvalid)
        nas_zero_packed_tail(a, pix0, npix, g0 + 1);
}

static TGT void pack_avx2(const float *x, uint64_t *out, long rows, long C)
{
    const long words = (C + 63) / 64;
    const __m256 zero = _mm256_setzero_ps();
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        uint64_t *o = out + r * words;
        long c = 0;
        for (long w = 0; w < words; w++) {
            uint64_t bits = 0;
            for (int k = 0; k < 8 && c < C; k++, c += 8) {
                unsigned m;
                if (C - c >= 8) {
                    m = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(xr + c), zero, _CMP_GE_OQ));
                } else {
                    m = 0;
                    for (long i = c; i < C; i++)
                        m |= (unsigned)(xr[i] >= 0.0f) << (i - c);
                }
                bits |= (uint64_t)m << (8 * k);
            }
            o[w] = bits;
        }
    }
}

static TGT uint64_t peak_avx2(long reps)
{
    uint64_t buf[64 * 4] __attribute__((aligned(32)));
    for (int i = 0; i < 64 * 4; i++)
        buf[i] = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1);
    const uint64_t *p = buf;
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    __m256i acc8[8], acc64 = zero;
    __m256i v = _mm256_set1_epi64x(0x0123456789ABCDEFLL);
    for (long r = 0; r < reps; r++) {
        __asm__ volatile("" : "+r"(p), "+x"(v));
        for (int k = 0; k < 8; k++)
            acc8[k] = zero;
        for (int i = 0; i < 64; i += 8) /* 8 passes per flush: byte counts stay < 256 */
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                acc8[k] = _mm256_add_epi8(acc8[k], nibble_popcount(_mm256_xor_si256(
                    _mm256_load_si256((const __m256i *)(p + (i + k) * 4)), v), lut, low));
        for (int k = 0; k < 8; k++)
            acc64 = _mm256_add_epi64(acc64, _mm256_sad_epu8(acc8[k], zero));
    }
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, acc64);
    return out[0] + out[1] + out[2] + out[3];
}

const kernel_level nas_level_avx2 = {
    "avx2", 1, conv_avx2, pack_avx2, peak_avx2, 64L * 256,
};
#endif
