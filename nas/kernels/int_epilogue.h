/* The float32 epilogue of an integer layer (semantics: nas/quant/integer.py), one definition
 * shared by the integer kernels (int.h, `nas infer`) and the exported C package
 * (`nas export --format c` ships this file as it is). Every step is one float32 operation in
 * this order; compile with -ffp-contract=off (no FMA contraction). C99, no dependencies. */
#ifndef NAS_INT_EPILOGUE_H
#define NAS_INT_EPILOGUE_H

#include <math.h>
#include <stdint.h>

enum { NAS_ACT_NONE = 0, NAS_ACT_RELU = 1, NAS_ACT_HSWISH = 2 };

/* y = act((float)acc * scale + bias [+ *res]) */
static inline float nas_int_epilogue(int32_t acc, float scale, float bias, const float *res, int act)
{
    float y = (float)acc * scale;
    y = y + bias;
    if (res)
        y = y + *res;
    if (act == NAS_ACT_RELU) {
        y = y > 0.f ? y : 0.f;
    } else if (act == NAS_ACT_HSWISH) {
        float t = y + 3.f;
        t = t < 0.f ? 0.f : t;
        t = t > 6.f ? 6.f : t;
        y = (y * t) / 6.f;
    }
    return y;
}

/* The next layer's code of y: rint(min(max(y, lo), alpha) / s), as a byte (int8 / uint8). */
static inline uint8_t nas_int_requant(float y, float lo, float alpha, float s)
{
    float v = y < lo ? lo : y;
    v = v > alpha ? alpha : v;
    v = v / s;
    return (uint8_t)(int)rintf(v);
}

#endif
