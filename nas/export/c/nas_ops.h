/* Operations of an exported `nas` model (`nas export --format c`): C99, no malloc, no
 * dependencies beyond <string.h> / <math.h>. Activations NHWC in the model's static arena:
 * float32; activation codes at their width b (2/4/8 bits, packed per pixel: a pixel of C
 * channels takes ceil(C * b / 8) bytes, channel c is bits (c * b) % 8 .. + b - 1 of its byte
 * c * b / 8, unsigned or two's complement signed: the cost model's `tensor_bytes`); or packed
 * signs (uint64 words per pixel, channel c = bit c % 64 of word c / 64, 1 = +1).
 * Weights are read straight from the payload bytes (layout: nas/cost/layout.py); floats in
 * it are read with memcpy (records are not aligned). Semantics: nas/quant/integer.py (integer
 * layers, epilogue in int_epilogue.h), nas/kernels/__init__.py (binary layers). */
#ifndef NAS_OPS_H
#define NAS_OPS_H

#include <stdint.h>

#include "int_epilogue.h"

typedef struct nas_conv {
    int H, W, cin, Ho, Wo, cout, kh, kw, sh, sw, ph, pw, groups;
    int w_bits;              /* 2/4/8: packed codes; 1: packed words */
    const uint8_t *weight;   /* the record's weight part */
    const uint8_t *scale;    /* float32 (cout,) payload scale (m_c * BN factor) */
    const uint8_t *bias;     /* float32 (cout,) */
    float s_x;               /* integer: the input's PACT step alpha / steps (float32) */
    int16_t in_bits;         /* integer: the input codes' width (2/4/8, packed per pixel) */
    int16_t in_signed;       /* integer: input codes are signed */
    int act;                 /* NAS_ACT_* fused (integer layers) */
    int requant;             /* integer: 0 writes float32; 2/4/8 writes the next layer's codes
                                (q_lo, q_alpha, q_s) packed at that width */
    float q_lo, q_alpha, q_s;
} nas_conv;

/* One operation of the model (model.c's table, run in order by nas_model_exec): the table is
 * data, so no code size depends on the model (nas/cost/mcu.py prices flash from it). */
enum { NAS_OP_QUANTIZE, NAS_OP_INT_CONV, NAS_OP_PACK_SIGNS, NAS_OP_BINARY_CONV, NAS_OP_RELU, NAS_OP_HSWISH,
       NAS_OP_ADD, NAS_OP_AVGPOOL2, NAS_OP_GLOBAL_AVGPOOL };

typedef struct nas_step {
    int16_t op;           /* NAS_OP_* */
    int16_t bits;         /* quantize: the codes' width (2/4/8) */
    int32_t in, res, out; /* arena byte offsets; res < 0: none (add: the second operand) */
    int32_t n, H, W, C;   /* relu / hswish / add: n elements; quantize / pack_signs: n pixels of C; pools: H, W, C */
    const nas_conv *conv; /* int_conv / binary_conv */
    float lo, alpha, s;   /* quantize */
} nas_step;

typedef struct nas_model {
    const nas_step *steps;
    int32_t n_steps;
    uint8_t *arena;
    int32_t in, in_bytes, out, out_bytes; /* where the input is copied to and the logits read from */
} nas_model;

/* copy input into the arena, run the steps in order, copy the logits out; returns 0 */
int nas_model_exec(const nas_model *m, const float *input, float *logits);

/* float32 (pixels, C) -> codes rint(min(max(x, lo), alpha) / s), packed at `bits` per pixel */
void nas_quantize(const float *x, uint8_t *y, long pixels, int C, int bits, float lo, float alpha, float s);
/* integer conv / linear (linear: 1x1 on 1x1); res: float32 (Ho, Wo, cout) or NULL */
void nas_int_conv(const nas_conv *c, const uint8_t *x, const float *res, void *y);
/* float32 (pixels, C) -> packed signs (pixels, ceil(C / 64)) words, x >= 0 is +1 */
void nas_pack_signs(const float *x, uint64_t *y, long pixels, int C);
/* binary conv / linear on packed signs, one-padding; float32 out, + res when given */
void nas_binary_conv(const nas_conv *c, const uint64_t *x, const float *res, float *y);
void nas_relu(const float *x, float *y, long n);
void nas_hswish(const float *x, float *y, long n);
void nas_add(const float *a, const float *b, float *y, long n);
/* AvgPool2d(2, ceil_mode=True): a window past the edge averages the pixels inside */
void nas_avgpool2(const float *x, float *y, int H, int W, int C);
/* global average pool in a fixed order: sum pixels 0, 1, ... in float32, then / (H * W) */
void nas_global_avgpool(const float *x, float *y, int H, int W, int C);

#endif
