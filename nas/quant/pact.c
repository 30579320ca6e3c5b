/* PACT activation fake-quantization, forward and backward in one pass each.
 *
 * The formula is nas.quant.functions.PACT's (Choi et al. 2018):
 *     y = round(clip(x) / s) * s,  s = alpha / steps,  clip to [lo, alpha], lo = -alpha or 0
 * with round half to even (nearbyintf in the default rounding mode, as torch.round) and the
 * same float32 operations in the same order as the PyTorch expression, so values are equal.
 * Backward: dy/dx = 1 inside the clip range, 0 outside; dy/dalpha = sum of the upstream
 * gradient where x >= alpha, minus it where x <= -alpha (signed sites), summed in double.
 *
 * Written because the PyTorch expression takes about a dozen passes over every activation
 * tensor per training step (a quarter of an 8-bit candidate's training time on CPU); these
 * take one pass forward and one backward. Tensors are passed as data pointers: the caller
 * (functions.py) guarantees float32, CPU, dense storage, and n elements.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PARALLEL_MIN (1L << 16) /* elements below which a fork costs more than it saves */
/* One build, the widest vectors the CPU has (chosen at load by the dynamic linker). */
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* The loops run on one contiguous chunk per thread: an OpenMP-outlined body with an `if`
 * clause is not vectorized by GCC (it was scalar vdivss / vroundss before, about 4 cycles an
 * element); a plain restrict-qualified loop per chunk is (vdivps, vroundps, vmaxps). */
CLONES static void forward_chunk(const float *restrict x, float *restrict y, long n, float alpha, float lo,
                                 float scale)
{
    for (long i = 0; i < n; i++) {
        float v = x[i];
        v = v < lo ? lo : v; /* torch.maximum(x, lo); NaN stays NaN */
        v = v > alpha ? alpha : v; /* torch.minimum(., alpha) */
        y[i] = nearbyintf(v / scale) * scale;
    }
}

/* dy/dx into gx; returns the clip gradient of the chunk (summed in double, vector lanes then
 * chunks: the order differs from a serial sum by double rounding only) */
CLONES static double backward_chunk(const float *restrict g, const float *restrict x, float *restrict gx, long n,
                                    float alpha, int is_signed)
{
    double clip_grad = 0.0;
    /* float selects, not int flags: GCC if-converts these for AVX2 too */
    if (is_signed) {
#pragma omp simd reduction(+ : clip_grad)
        for (long i = 0; i < n; i++) {
            const float v = x[i];
            const float keep = (v >= alpha) | (v <= -alpha) ? 0.0f : 1.0f;
            const float sign = v >= alpha ? 1.0f : (v <= -alpha ? -1.0f : 0.0f);
            gx[i] = g[i] * keep; /* grad * mask, as the PyTorch expression (NaN * 0 = NaN) */
            clip_grad += (double)(g[i] * sign); /* exact: sign is -1, 0 or 1 */
        }
    } else {
#pragma omp simd reduction(+ : clip_grad)
        for (long i = 0; i < n; i++) {
            const float v = x[i];
            const float keep = (v >= alpha) | (v < 0.0f) ? 0.0f : 1.0f;
            const float sign = v >= alpha ? 1.0f : 0.0f;
            gx[i] = g[i] * keep;
            clip_grad += (double)(g[i] * sign);
        }
    }
    return clip_grad;
}

static long chunks_for(long n, int nt) { return nt > 1 && n >= PARALLEL_MIN ? nt : 1; }

static void forward_loop(const float *x, float *y, long n, float alpha, float lo, float scale, int nt)
{
    const long chunks = chunks_for(n, nt);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (chunks > 1) schedule(static)
#endif
    for (long c = 0; c < chunks; c++) {
        const long s = n * c / chunks, e = n * (c + 1) / chunks;
        forward_chunk(x + s, y + s, e - s, alpha, lo, scale);
    }
}

static double backward_loop(const float *g, const float *x, float *gx, long n, float alpha, int is_signed, int nt)
{
    const long chunks = chunks_for(n, nt);
    double clip_grad = 0.0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (chunks > 1) schedule(static) reduction(+ : clip_grad)
#endif
    for (long c = 0; c < chunks; c++) {
        const long s = n * c / chunks, e = n * (c + 1) / chunks;
        clip_grad += backward_chunk(g + s, x + s, gx + s, e - s, alpha, is_signed);
    }
    return clip_grad;
}

static PyObject *py_forward(PyObject *self, PyObject *args)
{
    unsigned long long xp, yp;
    long n, steps, threads;
    float alpha;
    int is_signed;
    if (!PyArg_ParseTuple(args, "KKlflpl", &xp, &yp, &n, &alpha, &steps, &is_signed, &threads))
        return NULL;
    if (n < 0 || steps < 1)
        return PyErr_Format(PyExc_ValueError, "pact.forward: n=%ld steps=%ld; expected n >= 0, steps >= 1", n, steps);
    const float *x = (const float *)(uintptr_t)xp;
    float *y = (float *)(uintptr_t)yp;
    const float scale = alpha / (float)steps;
    const float lo = is_signed ? -alpha : 0.0f;
    const int nt = threads < 1 ? 1 : (int)threads;
    Py_BEGIN_ALLOW_THREADS
    forward_loop(x, y, n, alpha, lo, scale, nt);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_backward(PyObject *self, PyObject *args)
{
    unsigned long long gp, xp, gxp;
    long n, threads;
    float alpha;
    int is_signed;
    if (!PyArg_ParseTuple(args, "KKKlfpl", &gp, &xp, &gxp, &n, &alpha, &is_signed, &threads))
        return NULL;
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "pact.backward: n=%ld; expected n >= 0", n);
    const float *g = (const float *)(uintptr_t)gp;
    const float *x = (const float *)(uintptr_t)xp;
    float *gx = (float *)(uintptr_t)gxp;
    const int nt = threads < 1 ? 1 : (int)threads;
    double clip_grad;
    Py_BEGIN_ALLOW_THREADS
    clip_grad = backward_loop(g, x, gx, n, alpha, is_signed, nt);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(clip_grad);
}

static PyMethodDef methods[] = {
    {"forward", py_forward, METH_VARARGS, "forward(x_ptr, y_ptr, n, alpha, steps, signed, threads)"},
    {"backward", py_backward, METH_VARARGS,
     "backward(grad_ptr, x_ptr, grad_x_ptr, n, alpha, signed, threads) -> clip gradient"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_pact", "PACT fake-quantization in one pass (forward, backward).", -1, methods,
};

PyMODINIT_FUNC PyInit__pact(void) { return PyModule_Create(&moduledef); }
