/* Portable C level of the integer kernels (int.h): plain loops, int32 accumulators. */
#include "int.h"

static void conv_row(const int_args *a, long n, long oy)
{
    const long cstride = (long)a->G * a->cpad;
    const int pairs = a->cpad / 2;
    for (long ox = 0; ox < a->Wo; ox++) {
        const long pix = (n * a->Ho + oy) * a->Wo + ox;
        for (int g = 0; g < a->G; g++)
            for (int b = 0; b < a->nb; b++) {
                int32_t acc[NAS_INT_LANES] = {0};
                const int16_t *w = a->wl + ((long)g * a->nb + b) * a->kh * a->kw * pairs * NAS_INT_LANES * 2;
                for (int ky = 0; ky < a->kh; ky++)
                    for (int kx = 0; kx < a->kw; kx++) {
                        const int16_t *x = a->xp + ((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * cstride
                                           + (long)g * a->cpad;
                        for (int p = 0; p < pairs; p++, w += NAS_INT_LANES * 2)
                            for (int l = 0; l < NAS_INT_LANES; l++)
                                acc[l] += (int32_t)x[2 * p] * w[2 * l] + (int32_t)x[2 * p + 1] * w[2 * l + 1];
                    }
                const int c0 = g * a->cout_g + b * NAS_INT_LANES;
                const int nl = a->cout_g - b * NAS_INT_LANES < NAS_INT_LANES ? a->cout_g - b * NAS_INT_LANES
                                                                                : NAS_INT_LANES;
                for (int l = 0; l < nl; l++)
                    nas_int_store(a, pix, c0 + l, acc[l]);
            }
    }
}

static void dw_row(const int_args *a, long n, long oy)
{
    const long C = a->cout, cstride = C; /* depthwise: cpad = cin_g = 1, G = C */
    for (long ox = 0; ox < a->Wo; ox++) {
        const long pix = (n * a->Ho + oy) * a->Wo + ox;
        for (long c = 0; c < C; c++) {
            int32_t acc = 0;
            for (int ky = 0; ky < a->kh; ky++)
                for (int kx = 0; kx < a->kw; kx++)
                    acc += (int32_t)a->xp[((n * a->Hp + oy * a->sh + ky) * a->Wp + ox * a->sw + kx) * cstride + c]
                           * (int16_t)a->wd[((long)ky * a->kw + kx) * C + c];
            nas_int_store(a, pix, (int)c, acc);
        }
    }
}

static int64_t peak(long reps)
{
    int32_t acc[64] = {0};
    volatile int16_t seed = 3;
    int16_t x = seed, w = (int16_t)(seed + 1);
    for (long r = 0; r < reps; r++) {
        for (int i = 0; i < 64; i++)
            acc[i] += (int32_t)x * (int16_t)(w + i);
        __asm__ volatile("" : "+r"(x));
    }
    int64_t s = 0;
    for (int i = 0; i < 64; i++)
        s += acc[i];
    return s;
}

const int_level nas_int_portable = {.name = "portable", .conv = conv_row, .dw = dw_row, .peak = peak, .macs_per_rep = 64};
