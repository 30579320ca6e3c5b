/* Shared declarations of the packed-binary (XNOR-popcount) kernels.
 *
 * Bit layout (see nas/kernels/__init__.py for the full contract): channel c of a pixel is
 * bit c % 64 (LSB first) of uint64 word c / 64; bit 1 means +1 (x >= 0), bit 0 means -1.
 * Unused tail bits of the last word are 0. Words are little-endian, so the 8 channels
 * 8g..8g+7 are exactly byte g of a pixel's packed words: the kernels write packed outputs
 * one byte per group of 8 output channels.
 *
 * Inside the kernels weights are re-laid out so that output channels sit in vector lanes:
 * "lane layout" (gpad, kh, kw, wi, 8) uint64, gpad = number of 8-channel groups rounded up
 * to a multiple of NAS_GROUP_ALIGN, channels past Cout are zero words.
 */
#ifndef NAS_BINARY_H
#define NAS_BINARY_H

#include <stddef.h>
#include <stdint.h>

#define NAS_GROUP_ALIGN 8 /* every ISA's channel block (in 8-channel groups) divides this */

typedef struct conv_args {
    const uint64_t *x;  /* input (N, H, W, wi) words, unpadded */
    long N, H, W;
    int wi;             /* words per input pixel = ceil(Cin / 64) */
    long Ho, Wo;        /* output size */
    int kh, kw, sh, sw, ph, pw;
    const uint64_t *wl; /* lane-layout weights (gpad, kh, kw, wi, 8) */
    int cout;
    int gvalid;         /* ceil(cout / 8) */
    int gpad;           /* groups in wl, multiple of NAS_GROUP_ALIGN */
    int K;              /* kh * kw * Cin: valid bits per output value */
    const float *scale; /* gpad * 8 entries (zero past cout) */
    const float *bias;  /* gpad * 8 entries */
    /* Threshold form of the packed output, set only when there is neither a float output
     * nor a residual: bit c = lo[c] <= pop <= hi[c] (pop = popcount(a xor w), dot = K - 2 pop)
     * gives exactly (dot * scale[c] + bias[c] >= 0); an empty window is lo = hi = K + 1.
     * The same window as 64-bit lanes: neglo = -lo, win = hi - lo, so that with accumulators
     * started at -lo the test is one unsigned compare, acc <= win. gpad * 8 entries each;
     * all NULL: float path. */
    const int32_t *lo, *hi;
    const int64_t *neglo, *win;
    const float *res;   /* residual (N, Ho, Wo, cout) or NULL */
    float *yf;          /* float output (N, Ho, Wo, cout) or NULL */
    uint8_t *yp;        /* packed output as bytes (N, Ho, Wo, wo * 8) or NULL */
    int wo;             /* words per output pixel = ceil(cout / 64) */
} conv_args;

/* Layout of the epilogue buffer (float32 slots, E = gpad * 8): scale [0, E), bias [E, 2E),
 * lo (int32) [2E, 3E), hi (int32) [3E, 4E), neglo (int64) [4E, 6E), win (int64) [6E, 8E). */
#define NAS_EPILOGUE_SLOTS(gpad) ((long)(gpad) * 64)

/* One kernel level's convolution of `npix` consecutive output pixels (output pixel index
 * pix0 onwards, same output row) for channel groups [g0, g0 + groups_per_block).
 * rows[ky] is the first word of pixel 0's input patch row ky (kw * wi words, in the
 * one-padded input the driver builds); pixel p's patch row starts p * ps words later. Writes
 * yf / yp for those pixels and groups; the block holding the last valid group also zeroes
 * the packed bytes after it (up to wo * 8). */
typedef void (*conv_fn)(const conv_args *a, const uint64_t *const *rows, long ps, long npix, long pix0, int g0);
/* Sign-pack `rows` rows of C floats into rows of ceil(C / 64) words. */
typedef void (*pack_fn)(const float *x, uint64_t *out, long rows, long C);
/* Popcount peak microkernel: `reps` passes of xor + popcount + add over a block of
 * 64 vectors held in L1; returns a checksum so the work is not optimised away. */
typedef uint64_t (*peak_fn)(long reps);

typedef struct kernel_level {
    const char *name;
    int groups_per_block;
    conv_fn conv;
    pack_fn pack;
    peak_fn peak;
    long peak_bits_per_rep; /* binary MACs done by one rep of `peak` */
} kernel_level;

extern const kernel_level nas_level_portable;
#if defined(__x86_64__) || defined(__i386__)
#define NAS_X86 1
extern const kernel_level nas_level_avx2;
extern const kernel_level nas_level_avx512;
#endif

/* Zero the packed-output bytes [g_end, wo * 8) of npix pixels from pix0, when g_end is the
 * end of the block holding the last valid group (binary_portable.c). */
void nas_zero_packed_tail(const conv_args *a, long pix0, long npix, int g_end);


/* Helpers shared by the levels (binary_portable.c). */
void nas_zero_packed_tail(const conv_args *a, long pix0, long npix, int g_end);

#endif
