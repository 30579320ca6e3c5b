/* Operations of an exported `nas` model: see nas_ops.h. Compile with -ffp-contract=off. */
#include <string.h>

#include "nas_ops.h"

static inline float ld_f32(const uint8_t *p, long i)
{
    float f;
    memcpy(&f, p + 4 * i, 4);
    return f;
}

static inline uint64_t ld_u64(const uint8_t *p, long i)
{
    uint64_t v;
    memcpy(&v, p + 8 * i, 8);
    return v;
}

/* Codes packed per pixel (nas_ops.h): code c of a pixel whose bytes start at p. */
static inline int32_t ld_code(const uint8_t *p, int c, int bits, int is_signed)
{
    const int bit = c * bits, mask = (1 << bits) - 1;
    int32_t v = (p[bit >> 3] >> (bit & 7)) & mask;
    if (is_signed && v > (mask >> 1))
        v -= mask + 1; /* two's complement, `bits` wide */
    return v;
}

static inline void st_code(uint8_t *p, int c, int bits, uint8_t code)
{
    const int bit = c * bits, mask = (1 << bits) - 1;
    uint8_t *q = p + (bit >> 3);
    *q = (uint8_t)((*q & ~(mask << (bit & 7))) | ((code & mask) << (bit & 7)));
}

static inline long code_row(int C, int bits)
{
    return ((long)C * bits + 7) / 8;
}

void nas_quantize(const float *x, uint8_t *y, long pixels, int C, int bits, float lo, float alpha, float s)
{
    const long row = code_row(C, bits);
    for (long p = 0; p < pixels; p++)
        for (int c = 0; c < C; c++)
            st_code(y + p * row, c, bits, nas_int_requant(x[p * C + c], lo, alpha, s));
}

void nas_int_conv(const nas_conv *c, const uint8_t *x, const float *res, void *y)
{
    const int cin_g = c->cin / c->groups, cout_g = c->cout / c->groups;
    const int row = cin_g * c->kh * c->kw, b = c->w_bits, L = (1 << b) - 1;
    const long row_bytes = ((long)row * b + 7) / 8;
    const long x_row = code_row(c->cin, c->in_bits), y_row = c->requant ? code_row(c->cout, c->requant) : 0;
    for (int oc = 0; oc < c->cout; oc++) {
        const int g = oc / cout_g;
        const uint8_t *w = c->weight + oc * row_bytes;
        /* the layer's scale: s_x * (m_c * g_c) / L, as nas infer computes it (float32) */
        const float scale = (c->s_x * ld_f32(c->scale, oc)) / (float)L;
        const float bias = ld_f32(c->bias, oc);
        for (int oy = 0; oy < c->Ho; oy++)
            for (int ox = 0; ox < c->Wo; ox++) {
                int32_t acc = 0;
                for (int ic = 0; ic < cin_g; ic++) {
                    const int ch = g * cin_g + ic;
                    for (int ky = 0; ky < c->kh; ky++) {
                        const int iy = oy * c->sh - c->ph + ky;
                        if (iy < 0 || iy >= c->H)
                            continue; /* zero padding: code 0 */
                        for (int kx = 0; kx < c->kw; kx++) {
                            const int ix = ox * c->sw - c->pw + kx;
                            if (ix < 0 || ix >= c->W)
                                continue;
                            const long j = ((long)ic * c->kh + ky) * c->kw + kx, bit = j * b;
                            const int q = (w[bit >> 3] >> (bit & 7)) & L;
                            const int32_t xv = ld_code(x + ((long)iy * c->W + ix) * x_row, ch, c->in_bits,
                                                       c->in_signed);
                            acc += xv * (2 * q - L); /* w_int = 2q - L */
                        }
                    }
                }
                const long pix = (long)oy * c->Wo + ox, o = pix * c->cout + oc;
                const float v = nas_int_epilogue(acc, scale, bias, res ? res + o : NULL, c->act);
                if (c->requant)
                    st_code((uint8_t *)y + pix * y_row, oc, c->requant, nas_int_requant(v, c->q_lo, c->q_alpha, c->q_s));
                else
                    ((float *)y)[o] = v;
            }
    }
}

void nas_pack_signs(const float *x, uint64_t *y, long pixels, int C)
{
    const int words = (C + 63) / 64;
    for (long p = 0; p < pixels; p++)
        for (int wd = 0; wd < words; wd++) {
            uint64_t bits = 0;
            for (int c = wd * 64; c < C && c < (wd + 1) * 64; c++)
                bits |= (uint64_t)(x[p * C + c] >= 0.0f) << (c - wd * 64);
            y[p * words + wd] = bits;
        }
}

static inline int popcount64(uint64_t v)
{
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((v * 0x0101010101010101ULL) >> 56);
}

void nas_binary_conv(const nas_conv *c, const uint64_t *x, const float *res, float *y)
{
    const int wi = (c->cin + 63) / 64;
    const int K = c->kh * c->kw * c->cin;
    for (int oc = 0; oc < c->cout; oc++) {
        const float scale = ld_f32(c->scale, oc), bias = ld_f32(c->bias, oc);
        for (int oy = 0; oy < c->Ho; oy++)
            for (int ox = 0; ox < c->Wo; ox++) {
                long pop = 0;
                for (int ky = 0; ky < c->kh; ky++) {
                    const int iy = oy * c->sh - c->ph + ky;
                    for (int kx = 0; kx < c->kw; kx++) {
                        const int ix = ox * c->sw - c->pw + kx;
                        const int inside = iy >= 0 && iy < c->H && ix >= 0 && ix < c->W;
                        for (int wd = 0; wd < wi; wd++) {
                            const int valid = c->cin - wd * 64 < 64 ? c->cin - wd * 64 : 64;
                            /* one-padding: +1 in every valid channel */
                            const uint64_t xv = inside ? x[((long)iy * c->W + ix) * wi + wd]
                                                       : (valid == 64 ? ~0ULL : ((1ULL << valid) - 1));
                            const uint64_t wv = ld_u64(c->weight, (((long)oc * c->kh + ky) * c->kw + kx) * wi + wd);
                            pop += popcount64(xv ^ wv);
                        }
                    }
                }
                const long o = ((long)oy * c->Wo + ox) * c->cout + oc;
                float v = (float)(K - 2 * pop);
                v = v * scale;
                v = v + bias;
                if (res)
                    v = v + res[o];
                y[o] = v;
            }
    }
}

void nas_relu(const float *x, float *y, long n)
{
    for (long i = 0; i < n; i++)
        y[i] = x[i] > 0.f ? x[i] : 0.f;
}

void nas_hswish(const float *x, float *y, long n)
{
    for (long i = 0; i < n; i++) {
        float t = x[i] + 3.f;
        t = t < 0.f ? 0.f : t;
        t = t > 6.f ? 6.f : t;
        y[i] = (x[i] * t) / 6.f;
    }
}

void nas_add(const float *a, const float *b, float *y, long n)
{
    for (long i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

void nas_avgpool2(const float *x, float *y, int H, int W, int C)
{
    const int Ho = (H + 1) / 2, Wo = (W + 1) / 2;
    for (int oy = 0; oy < Ho; oy++)
        for (int ox = 0; ox < Wo; ox++)
            for (int c = 0; c < C; c++) {
                float s = 0.f;
                int n = 0;
                for (int iy = 2 * oy; iy < 2 * oy + 2 && iy < H; iy++)
                    for (int ix = 2 * ox; ix < 2 * ox + 2 && ix < W; ix++, n++)
                        s = s + x[((long)iy * W + ix) * C + c];
                y[((long)oy * Wo + ox) * C + c] = s / (float)n;
            }
}

void nas_global_avgpool(const float *x, float *y, int H, int W, int C)
{
    const long n = (long)H * W;
    for (int c = 0; c < C; c++) {
        float s = x[c];
        for (long p = 1; p < n; p++)
            s = s + x[p * C + c];
        y[c] = s / (float)n;
    }
}

int nas_model_exec(const nas_model *m, const float *input, float *logits)
{
    uint8_t *a = m->arena;
    memcpy(a + m->in, input, (size_t)m->in_bytes);
    for (int i = 0; i < m->n_steps; i++) {
        const nas_step *s = &m->steps[i];
        const float *res = s->res < 0 ? NULL : (const float *)(a + s->res);
        switch (s->op) {
        case NAS_OP_QUANTIZE:
            nas_quantize((const float *)(a + s->in), a + s->out, s->n, s->C, s->bits, s->lo, s->alpha, s->s);
            break;
        case NAS_OP_INT_CONV:
            nas_int_conv(s->conv, a + s->in, res, a + s->out);
            break;
        case NAS_OP_PACK_SIGNS:
            nas_pack_signs((const float *)(a + s->in), (uint64_t *)(a + s->out), s->n, s->C);
            break;
        case NAS_OP_BINARY_CONV:
            nas_binary_conv(s->conv, (const uint64_t *)(a + s->in), res, (float *)(a + s->out));
            break;
        case NAS_OP_RELU:
            nas_relu((const float *)(a + s->in), (float *)(a + s->out), s->n);
            break;
        case NAS_OP_HSWISH:
            nas_hswish((const float *)(a + s->in), (float *)(a + s->out), s->n);
            break;
        case NAS_OP_ADD:
            nas_add((const float *)(a + s->in), res, (float *)(a + s->out), s->n);
            break;
        case NAS_OP_AVGPOOL2:
            nas_avgpool2((const float *)(a + s->in), (float *)(a + s->out), s->H, s->W, s->C);
            break;
        case NAS_OP_GLOBAL_AVGPOOL:
            nas_global_avgpool((const float *)(a + s->in), (float *)(a + s->out), s->H, s->W, s->C);
            break;
        default:
            return 1;
        }
    }
    memcpy(logits, a + m->out, (size_t)m->out_bytes);
    return 0;
}
