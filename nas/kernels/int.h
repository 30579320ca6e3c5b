/* Shared declarations of the integer (2..8-bit) conv kernels, nas.kernels._int.
 *
 * Semantics: nas/quant/integer.py. Codes: activations uint8 / int8 NHWC, weights int16
 * (w_int = 2q - L, odd in -255..255, or ternary -1/0/1). The driver (int_module.c) widens
 * the input once into a zero-padded int16 copy, pairs of input channels adjacent:
 *   xp (N, Hp, Wp, G, cpad)  int16, cpad = cin_g rounded up to even, Hp = H + 2 ph ...
 * Standard / grouped conv weights in lane layout (16 output channels of a group in lanes,
 * two input channels per lane, the operand of vpmaddwd / vpdpwssd):
 *   wl (G, nb, kh, kw, cpad / 2, 16, 2) int16, nb = ceil(cout_g / 16), zero past cout_g
 * Depthwise (groups = Cin = Cout) weights: wd (kh, kw, C) int32 slots holding the int16 code in
 * the low half and 0 in the high half, channels in lanes (vpmaddwd of a sign-extended input
 * with such a slot is exactly x * w).
 * Accumulators are int32 (exact: |acc| <= 255 * 255 * K < 2^31, K = kh kw cin_g checked).
 *
 * Byte path (levels with conv_q: AVX-512 VNNI's vpdpbusd, 64 u8 x s8 MACs per instruction, any
 * int8 code; AVX2's vpmaddubsw, codes within +-15 only), taken when the driver is given byte
 * weights that the level's byte path is exact for (q_wmax, q_split):
 *   xq (N, Hp, Wp, G, cq)    uint8 (+ 64 bytes of slack), padding as stated below
 *   wq (G, nb, kh, nseg, segq, 16, 4) int8: four bytes of the receptive field per lane
 * One kernel row of a pixel is read as nseg segments of segq quads (4 bytes each):
 *   groups = 1: cq = cin and the row is contiguous (kw * cin bytes): one segment of
 *               ceil(kw cin / 4) quads (weights past kw cin are 0, so the bytes read past the
 *               row, up to 3, do not count) - a 1- or 3-channel stem is not padded 4x;
 *   groups > 1: cq = cin_g rounded up to a multiple of 4, one segment per kx of cq / 4 quads.
 * Weights with |w_int| <= 127 are their own int8 code. 8-bit DoReFa codes (odd, -255..255)
 * are split exactly: w_int = 2 s + 1 with s in -128..127, so
 *   sum x w_int = 2 sum x s + sum x,
 * and sum x over the receptive field of each output pixel and group comes from psum
 * (N * Ho * Wo, G) int32 (split = 1), which the driver builds from the padded input's channel
 * sums by a separable box sum (kw along rows, then kh along columns).
 * Signed codes x run as u = x + 128 (padding: u = 128, i.e. x = 0), exactly:
 *   sum x c = sum u c - 128 sum c      (c = the byte code: w_int, or s when split),
 * the last term one constant per output channel (wcorr = -128 sum c), and for the split
 * sum x = sum u - 128 kh kw cin_g (xcorr).
 * The epilogue (nas_int_store) is the same scalar float32 code for every level, compiled
 * with -ffp-contract=off: bit-identical results on every level.
 */
#ifndef NAS_INT_H
#define NAS_INT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "int_epilogue.h"

#define NAS_INT_LANES 16

/* NAS_ACT_* and the epilogue arithmetic: int_epilogue.h (shared with the C export) */

typedef struct int_args {
    const int16_t *xp;  /* padded int16 input (N, Hp, Wp, G * cpad) */
    long N, Hp, Wp, Ho, Wo;
    int G, cin_g, cpad, cout, cout_g, nb;
    int kh, kw, sh, sw;
    const int16_t *wl;  /* lane layout, or NULL for depthwise */
    const int32_t *wd;  /* depthwise weights (kh, kw, C), or NULL */
    const float *scale, *bias; /* (cout,) */
    const float *res;   /* (N, Ho, Wo, cout) float32 or NULL */
    int act;
    float *yf;          /* float output (N, Ho, Wo, cout) or NULL */
    uint8_t *yc;        /* code output (N, Ho, Wo, cout) bytes (int8 / uint8) or NULL */
    float q_lo, q_alpha, q_s; /* requantization clip and scale when yc */
    /* byte path (conv_q): NULL / 0 when the int16 path runs */
    const uint8_t *xq;  /* padded uint8 input (N, Hp, Wp, G * cq) */
    const int8_t *wq;   /* byte lane layout */
    const int32_t *psum; /* split: sum x (+ xcorr) over each output pixel's receptive field, (N*Ho*Wo, G) */
    int cq, split, nseg, segq;
    const int32_t *wcorr; /* signed input: -128 * sum of each output channel's byte codes, else NULL */
    int32_t xcorr;        /* signed input and split: -128 * kh * kw * cin_g, else 0 */
} int_args;

/* Epilogue of one output value: pixel index pix = (n * Ho + oy) * Wo + ox, channel c. */
static inline void nas_int_store(const int_args *a, long pix, int c, int32_t acc)
{
    const float y = nas_int_epilogue(acc, a->scale[c], a->bias[c], a->res ? a->res + pix * a->cout + c : NULL, a->act);
    if (a->yc)
        a->yc[pix * a->cout + c] = nas_int_requant(y, a->q_lo, a->q_alpha, a->q_s);
    else
        a->yf[pix * a->cout + c] = y;
}

/* One output row (n, oy), all channels. */
typedef void (*int_row_fn)(const int_args *a, long n, long oy);
/* Flat output pixels p0..p1-1 (p = (n * Ho + oy) * Wo + ox), all channels: the byte path. */
typedef void (*int_pix_fn)(const int_args *a, long p0, long p1);

typedef struct int_level {
    const char *name;
    int_row_fn conv;  /* standard / grouped, lane-layout weights */
    int_row_fn dw;    /* depthwise */
    /* Dot-product peak microkernel: reps passes of a block of independent multiply-adds on
     * registers; returns a checksum; macs_per_rep int16 MACs per rep. */
    int64_t (*peak)(long reps);
    long macs_per_rep;
    int_pix_fn conv_q;             /* byte path (xq, wq), or NULL where the level has none */
    /* codes[i] = rint(min(max(x[i], lo), alpha) / s) as bytes for i < n: nas_int_requant on a
     * float32 array (the float -> integer boundary), or NULL where the level has none */
    void (*quantize)(const float *x, long n, float lo, float alpha, float s, uint8_t *codes);
    /* byte path: out[p] = sum of the n bytes at x + p * n, for p < np (the split's channel sums) */
    void (*byte_sums)(const uint8_t *x, long np, long n, int32_t *out);
    int64_t (*peak_q)(long reps);  /* u8 x s8 multiply-add peak of the byte path, or NULL */
    long macs_per_rep_q;
    /* the byte path is exact for stored codes |c| <= q_wmax, split weights (w = 2 s + 1) when
     * q_split: the driver takes it only then (AVX-512 VNNI: any int8, split; AVX2's vpmaddubsw:
     * |c| <= 15, not split) */
    int q_wmax, q_split;
} int_level;

extern const int_level nas_int_portable;
#if defined(__x86_64__) || defined(__i386__)
#define NAS_INT_X86 1
extern const int_level nas_int_avx2;
extern const int_level nas_int_avx512;
#endif

#endif
