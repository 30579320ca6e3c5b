/* Portable C level of the packed-binary kernels: plain scalar code, no ISA extensions.
 * It is the reference the vector levels are tested against and the fallback on CPUs
 * (or architectures) without AVX2. */
#include <string.h>

#include "binary.h"

static inline int popcount64(uint64_t v)
{
#if defined(__GNUC__)
    return __builtin_popcountll(v);
#else
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((v * 0x0101010101010101ULL) >> 56);
#endif
}

void nas_zero_packed_tail(const conv_args *a, long pix0, long npix, int g_end)
{
    const int bytes = a->wo * 8;
    if (!a->yp || g_end >= bytes || g_end < a->gvalid)
        return;
    for (long p = 0; p < npix; p++)
        memset(a->yp + (pix0 + p) * bytes + g_end, 0, (size_t)(bytes - g_end));
}

static void conv_portable(const conv_args *a, const uint64_t *const *rows, long ps, long npix, long pix0, int g0)
{
    const int L = a->kw * a->wi;          /* words per patch row */
    const long gs = (long)a->kh * L * 8;  /* words per lane-layout group */
    const uint64_t *wg = a->wl + g0 * gs; /* (kh, kw * wi, 8) */
    const int bytes = a->wo * 8;
    for (long p = 0; p < npix; p++) {
        const long pix = pix0 + p;
        long pop[8] = {0};
        for (int ky = 0; ky < a->kh; ky++) {
            const uint64_t *xr = rows[ky] + p * ps;
            const uint64_t *wr = wg + (long)ky * L * 8;
            for (int j = 0; j < L; j++)
                for (int l = 0; l < 8; l++)
                    pop[l] += popcount64(xr[j] ^ wr[j * 8 + l]);
        }
        unsigned mask = 0;
        if (a->lo) { /* threshold form, packed output only */
            for (int l = 0; l < 8; l++)
                mask |= (unsigned)(a->lo[g0 * 8 + l] <= pop[l] && pop[l] <= a->hi[g0 * 8 + l]) << l;
            a->yp[pix * bytes + g0] = (uint8_t)mask;
            continue;
        }
        for (int l = 0; l < 8; l++) {
            const int c = g0 * 8 + l;
            if (c >= a->cout)
                break;
            /* Separate statements: one rounding for the multiply, one for each add. */
            float y = (float)(a->K - 2 * pop[l]);
            y = y * a->scale[c];
            y = y + a->bias[c];
            if (a->res)
                y = y + a->res[pix * a->cout + c];
            if (a->yf)
                a->yf[pix * a->cout + c] = y;
            mask |= (unsigned)(y >= 0.0f) << l;
        }
        if (a->yp)
            a->yp[pix * bytes + g0] = (uint8_t)mask;
    }
    if (g0 + 1 >= a->gvalid)
        nas_zero_packed_tail(a, pix0, npix, g0 + 1);
}

static void pack_portable(const float *x, uint64_t *out, long rows, long C)
{
    const long words = (C + 63) / 64;
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        uint64_t *o = out + r * words;
        for (long w = 0; w < words; w++) {
            uint64_t bits = 0;
            const long c1 = (w + 1) * 64 < C ? (w + 1) * 64 : C;
            for (long c = w * 64; c < c1; c++)
                bits |= (uint64_t)(xr[c] >= 0.0f) << (c - w * 64);
            o[w] = bits;
        }
    }
}

static uint64_t peak_portable(long reps)
{
    uint64_t buf[64], acc[8] = {0};
    for (int i = 0; i < 64; i++)
        buf[i] = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1);
    const uint64_t *p = buf;
    for (long r = 0; r < reps; r++) {
#if defined(__GNUC__)
        __asm__ volatile("" : "+r"(p)); /* reload the block every pass */
#endif
        for (int i = 0; i < 64; i += 8)
            for (int k = 0; k < 8; k++)
                acc[k] += (uint64_t)popcount64(p[i + k] ^ (uint64_t)r);
    }
    uint64_t s = 0;
    for (int k = 0; k < 8; k++)
        s += acc[k];
    return s;
}

const kernel_level nas_level_portable = {
    "portable", 1, conv_portable, pack_portable, peak_portable, 64 * 64,
};
