/* The probe solver's fused CPU kernels (mechprobe.stats._newton and _chunks): the extension
 * module mechprobe.stats._native, built at install time by setup.py.
 *
 * Each kernel reads a unit's row once and does all its arithmetic on it while it is in cache;
 * the torch code in _newton.py and _chunks.py computes the same quantities operation by
 * operation and stays the path on accelerators and where the extension was not built. Rows are
 * units, columns samples (the positives first). mechprobe.stats._kernels says why these few
 * loops are C.
 *
 * The Python functions at the end take numpy arrays (any object with the buffer protocol) and
 * check each one's dtype, shape and layout before the loops run: a wrong array is a TypeError
 * or ValueError, never a crash. They release the GIL while they compute, so that the solver's
 * worker threads run in parallel.
 *
 * CPU dispatch at run time: the hot loops are compiled once per instruction set
 * (target_clones: AVX-512, AVX2 with FMA, baseline) and the loader picks the best one the CPU
 * has, instead of a build for the building machine (-march=native).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && defined(__linux__)
#define MECHPROBE_DISPATCH 1
#define HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MECHPROBE_DISPATCH 0
#define HOT
#endif

#ifdef MECHPROBE_LIBMVEC
/* glibc's vector exp (libmvec), declared as glibc's math.h does under -ffast-math, which is
 * not used whole here: infinities and NaN keep their meaning (-fno-finite-math-only). */
__attribute__((__simd__("notinbranch"))) double exp(double);
__attribute__((__simd__("notinbranch"))) float expf(float);
#endif

/* The sums of one float64 Newton pass (see _newton._sums). For row r, with
 * p = sigmoid(a[r] + b[r] x), w = p (1 - p) and v = w (1 - 2 p):
 * out[9 r + 0..8] = sum p, sum w, sum v, sum p x, sum w x, sum v x, sum w x^2, sum v x^2,
 * sum v x^3. */
HOT static void sums64(const double *xs, ptrdiff_t rows, ptrdiff_t n, const double *a, const double *b,
            double *out)
{
    for (ptrdiff_t r = 0; r < rows; r++) {
        const double *x = xs + r * n;
        const double ar = a[r], br = b[r];
        double sp = 0, sw = 0, sv = 0, spx = 0, swx = 0, svx = 0, swx2 = 0, svx2 = 0, svx3 = 0;
#pragma omp simd reduction(+ : sp, sw, sv, spx, swx, svx, swx2, svx2, svx3)
        for (ptrdiff_t i = 0; i < n; i++) {
            const double xi = x[i], x2 = xi * xi;
            const double p = 1.0 / (1.0 + exp(-(ar + br * xi)));
            const double w = p - p * p, v = w - 2.0 * p * w;
            sp += p, sw += w, sv += v;
            spx += p * xi, swx += w * xi, svx += v * xi;
            swx2 += w * x2, svx2 += v * x2, svx3 += v * x2 * xi;
        }
        double *o = out + 9 * r;
        o[0] = sp, o[1] = sw, o[2] = sv, o[3] = spx, o[4] = swx, o[5] = svx;
        o[6] = swx2, o[7] = svx2, o[8] = svx3;
    }
}

/* The sums of one float32 warm-up pass: out[9 r + {0, 1, 3, 4, 6}] = sum p, sum w, sum p x,
 * sum w x, sum w x^2 (the other entries are left alone). */
HOT static void sums32(const float *xs, ptrdiff_t rows, ptrdiff_t n, const double *a, const double *b,
            double *out)
{
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *x = xs + r * n;
        const float ar = (float)a[r], br = (float)b[r];
        float sp = 0, sw = 0, spx = 0, swx = 0, swx2 = 0;
#pragma omp simd reduction(+ : sp, sw, spx, swx, swx2)
        for (ptrdiff_t i = 0; i < n; i++) {
            const float xi = x[i];
            const float p = 1.0f / (1.0f + expf(-(ar + br * xi)));
            const float w = p - p * p;
            sp += p, sw += w, spx += p * xi, swx += w * xi, swx2 += w * xi * xi;
        }
        double *o = out + 9 * r;
        o[0] = sp, o[1] = sw, o[3] = spx, o[4] = swx, o[6] = swx2;
    }
}

/* Standardise the rows j0 .. j0 + width - 1 of xs in place (see _chunks._load): each becomes
 * (x - mean) / sd (sd = 1 where it is 0 or not finite), also written in float32, and
 * stats[k * stride + j] gets, for k = 0..6: min and max among the first n1 samples (the
 * positives), min and max among the others (both over all samples unless 0 < n1 < n), mean,
 * sd (root mean square about the mean) and the sum of the standardised positives. A NaN makes
 * the row's minima and maxima NaN, an infinity one of them infinite. */
HOT static void standardise(double *xs, float *xs32, ptrdiff_t n, ptrdiff_t n1, ptrdiff_t j0,
                        ptrdiff_t width, double *stats, ptrdiff_t stride)
{
    const int two = 0 < n1 && n1 < n;
    const ptrdiff_t end1 = two ? n1 : n, start0 = two ? n1 : 0;
    for (ptrdiff_t j = j0; j < j0 + width; j++) {
        double *x = xs + j * n;
        float *x32 = xs32 + j * n;
        double sum = 0, ss = 0, syx = 0;
        double min1 = INFINITY, max1 = -INFINITY, min0 = INFINITY, max0 = -INFINITY;
#pragma omp simd reduction(min : min1) reduction(max : max1)
        for (ptrdiff_t i = 0; i < end1; i++)
            min1 = x[i] < min1 ? x[i] : min1, max1 = x[i] > max1 ? x[i] : max1;
#pragma omp simd reduction(min : min0) reduction(max : max0)
        for (ptrdiff_t i = start0; i < n; i++)
            min0 = x[i] < min0 ? x[i] : min0, max0 = x[i] > max0 ? x[i] : max0;
#pragma omp simd reduction(+ : sum)
        for (ptrdiff_t i = 0; i < n; i++)
            sum += x[i];
        if (isnan(sum)) /* the minima and maxima skip NaN: make the caller's check see it */
            min1 = max1 = min0 = max0 = NAN;
        const double mean = sum / (double)n;
#pragma omp simd reduction(+ : ss)
        for (ptrdiff_t i = 0; i < n; i++)
            ss += (x[i] - mean) * (x[i] - mean);
        const double sd = sqrt(ss) / sqrt((double)n);
        const double inv = sd > 0 && isfinite(sd) ? 1.0 / sd : 1.0;
        for (ptrdiff_t i = 0; i < n; i++) {
            x[i] = (x[i] - mean) * inv;
            x32[i] = (float)x[i];
        }
#pragma omp simd reduction(+ : syx)
        for (ptrdiff_t i = 0; i < n1; i++)
            syx += x[i];
        double *s = stats + j;
        s[0] = min1, s[stride] = max1, s[2 * stride] = min0, s[3 * stride] = max0;
        s[4 * stride] = mean, s[5 * stride] = sd, s[6 * stride] = syx;
    }
}

/* The rows of a chunk of c units, standardised: xs[j][i] is x[order[i] * ld + j] (samples
 * in the given order, the positives first), then `standardise`. Done a tile of units at a
 * time (about 512 KB of rows), so that its rows are still in cache when they are
 * standardised and each row of x is read a few cache lines at once. */
static ptrdiff_t tile_of(ptrdiff_t n)
{
    const ptrdiff_t t = 65536 / (n > 0 ? n : 1);
    return t < 16 ? 16 : t > 256 ? 256 : t;
}

/* prepare64 and prepare32: the same loop over float64 and float32 x. */
#define PREPARE(NAME, T)                                                                   \
    static void NAME(const T *x, ptrdiff_t ld, const long long *order, ptrdiff_t n, ptrdiff_t c,  \
              ptrdiff_t n1, double *xs, float *xs32, double *stats, ptrdiff_t stride)      \
    {                                                                                      \
        const ptrdiff_t tile = tile_of(n);                                                 \
        for (ptrdiff_t j0 = 0; j0 < c; j0 += tile) {                                       \
            const ptrdiff_t width = c - j0 < tile ? c - j0 : tile;                         \
            for (ptrdiff_t i = 0; i < n; i++)                                              \
                for (ptrdiff_t k = 0; k < width; k++)                                      \
                    xs[(j0 + k) * n + i] = x[order[i] * ld + j0 + k];                      \
            standardise(xs, xs32, n, n1, j0, width, stats, stride);                        \
        }                                                                                  \
    }

PREPARE(prepare64, double)
PREPARE(prepare32, float)

/* For each row r: the number of its first n1 entries above thr[r], minus the number of the
 * others above it (see _chunks._correct). */
HOT static void count_above(const double *xs, ptrdiff_t rows, ptrdiff_t n, ptrdiff_t n1, const double *thr,
                 long long *out)
{
    for (ptrdiff_t r = 0; r < rows; r++) {
        const double *x = xs + r * n;
        const double t = thr[r];
        long long above1 = 0, above0 = 0;
#pragma omp simd reduction(+ : above1)
        for (ptrdiff_t i = 0; i < n1; i++)
            above1 += x[i] > t;
#pragma omp simd reduction(+ : above0)
        for (ptrdiff_t i = n1; i < n; i++)
            above0 += x[i] > t;
        out[r] = above1 - above0;
    }
}

/* ---------------------------------------------------------------- the Python boundary */

/* What an argument must be: its element type, number of dimensions, whether it is written. */
enum kind { F64, F32, I64 };
static const char *const KIND_NAME[] = {"float64", "float32", "int64"};

/* Whether a buffer's struct format is `kind` in native byte order ('d', 'f', 'q' or 'l'). */
static int format_is(const Py_buffer *v, enum kind kind)
{
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=')
        f++;
#if PY_LITTLE_ENDIAN
    else if (*f == '<')
        f++;
#endif
    if (kind == F64)
        return v->itemsize == 8 && strcmp(f, "d") == 0;
    if (kind == F32)
        return v->itemsize == 4 && strcmp(f, "f") == 0;
    return v->itemsize == 8 && (strcmp(f, "q") == 0 || strcmp(f, "l") == 0);
}

/* Get the buffer of `obj` into v, checked: dtype `kind`, `ndim` dimensions, writable if asked,
 * C-contiguous unless `rows_only` (then only the last axis must be contiguous). On failure
 * sets a Python exception (TypeError for a wrong type, ValueError for a wrong layout), leaves
 * v released and returns -1. */
static int get_array(PyObject *obj, Py_buffer *v, const char *name, enum kind kind, int ndim,
                     int writable, int rows_only)
{
    if (PyObject_GetBuffer(obj, v, PyBUF_RECORDS_RO | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_Format(writable && (PyErr_GivenExceptionMatches(type, PyExc_BufferError) ||
                                 PyErr_GivenExceptionMatches(type, PyExc_ValueError))
                         ? PyExc_ValueError
                         : PyExc_TypeError,
                     "%s must be a%s %s numpy array (%S)", name, writable ? " writable" : "",
                     KIND_NAME[kind], value ? value : Py_None);
        Py_XDECREF(type), Py_XDECREF(value), Py_XDECREF(tb);
        return -1;
    }
    const char *why = NULL;
    if (!format_is(v, kind))
        PyErr_Format(PyExc_TypeError, "%s must be %s, got an array of format '%s'", name,
                     KIND_NAME[kind], v->format ? v->format : "B");
    else if (v->ndim != ndim)
        PyErr_Format(PyExc_ValueError, "%s must have %d dimension(s), got %d", name, ndim,
                     v->ndim);
    else if (!rows_only && !PyBuffer_IsContiguous(v, 'C'))
        why = "C-contiguous";
    else if (rows_only && (v->strides[ndim - 1] != v->itemsize || v->strides[0] < 0 ||
                           v->strides[0] % v->itemsize != 0))
        why = "contiguous along its last axis";
    else
        return 0;
    if (why)
        PyErr_Format(PyExc_ValueError, "%s must be %s", name, why);
    PyBuffer_Release(v);
    return -1;
}

#define MAX_ARRAYS 6

/* The buffers of one call, released together. */
typedef struct {
    Py_buffer v[MAX_ARRAYS];
    int n;
} Arrays;

static Py_buffer *take(Arrays *arr, PyObject *obj, const char *name, enum kind kind, int ndim,
                       int writable, int rows_only)
{
    Py_buffer *v = &arr->v[arr->n];
    if (get_array(obj, v, name, kind, ndim, writable, rows_only) < 0)
        return NULL;
    arr->n++;
    return v;
}

static PyObject *release(Arrays *arr, PyObject *result)
{
    for (int i = 0; i < arr->n; i++)
        PyBuffer_Release(&arr->v[i]);
    return result;
}

static PyObject *bad_shape(Arrays *arr, const char *message, Py_ssize_t got, Py_ssize_t want)
{
    PyErr_Format(PyExc_ValueError, "%s (got %zd, expected %zd)", message, got, want);
    return release(arr, NULL);
}

PyDoc_STRVAR(sums_doc,
             "sums(xs, a, b, out)\n--\n\n"
             "The sums of one Newton pass over the rows of xs (float64: all nine, float32: the\n"
             "five of p and w) into out, shape [rows, 9] float64; a and b: float64 [rows].");

static PyObject *py_sums(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ox, *oa, *ob, *oo;
    if (!PyArg_ParseTuple(args, "OOOO:sums", &ox, &oa, &ob, &oo))
        return NULL;
    Arrays arr = {.n = 0};
    Py_buffer probe;
    if (PyObject_GetBuffer(ox, &probe, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "xs must be a float64 or float32 numpy array");
        return NULL;
    }
    const enum kind kx = format_is(&probe, F32) ? F32 : F64;
    PyBuffer_Release(&probe);
    Py_buffer *x, *a, *b, *o;
    if (!(x = take(&arr, ox, "xs", kx, 2, 0, 0)) || !(a = take(&arr, oa, "a", F64, 1, 0, 0)) ||
        !(b = take(&arr, ob, "b", F64, 1, 0, 0)) || !(o = take(&arr, oo, "out", F64, 2, 1, 0)))
        return release(&arr, NULL);
    const Py_ssize_t rows = x->shape[0], n = x->shape[1];
    if (a->shape[0] != rows || b->shape[0] != rows)
        return bad_shape(&arr, "a and b need one entry per row of xs",
                         a->shape[0] != rows ? a->shape[0] : b->shape[0], rows);
    if (o->shape[0] != rows || o->shape[1] != 9)
        return bad_shape(&arr, "out must have shape [rows of xs, 9]",
                         o->shape[0] != rows ? o->shape[0] : o->shape[1],
                         o->shape[0] != rows ? rows : 9);
    Py_BEGIN_ALLOW_THREADS
    if (kx == F64)
        sums64(x->buf, rows, n, a->buf, b->buf, o->buf);
    else
        sums32(x->buf, rows, n, a->buf, b->buf, o->buf);
    Py_END_ALLOW_THREADS
    return release(&arr, Py_NewRef(Py_None));
}

PyDoc_STRVAR(prepare_doc,
             "prepare(x, order, n1, xs, xs32, stats)\n--\n\n"
             "Gather the first c = len(xs) columns of x (float64 or float32 [samples, >= c],\n"
             "contiguous along its rows) in the sample order `order` (int64 [n], each in\n"
             "range) into xs (float64 [c, n]) and xs32 (float32 [c, n]), standardised, and\n"
             "their statistics into stats (float64 [7, >= c]); n1: the number of positives.");

static PyObject *py_prepare(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ox, *oorder, *oxs, *oxs32, *ostats;
    Py_ssize_t n1;
    if (!PyArg_ParseTuple(args, "OOnOOO:prepare", &ox, &oorder, &n1, &oxs, &oxs32, &ostats))
        return NULL;
    Arrays arr = {.n = 0};
    Py_buffer probe;
    if (PyObject_GetBuffer(ox, &probe, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "x must be a float64 or float32 numpy array");
        return NULL;
    }
    const enum kind kx = format_is(&probe, F32) ? F32 : F64;
    PyBuffer_Release(&probe);
    Py_buffer *x, *order, *xs, *xs32, *stats;
    if (!(x = take(&arr, ox, "x", kx, 2, 0, 1)) ||
        !(order = take(&arr, oorder, "order", I64, 1, 0, 0)) ||
        !(xs = take(&arr, oxs, "xs", F64, 2, 1, 0)) ||
        !(xs32 = take(&arr, oxs32, "xs32", F32, 2, 1, 0)) ||
        !(stats = take(&arr, ostats, "stats", F64, 2, 1, 0)))
        return release(&arr, NULL);
    const Py_ssize_t c = xs->shape[0], n = xs->shape[1], samples = x->shape[0];
    if (order->shape[0] != n)
        return bad_shape(&arr, "order needs one entry per column of xs", order->shape[0], n);
    if (xs32->shape[0] != c || xs32->shape[1] != n)
        return bad_shape(&arr, "xs32 must have the shape of xs",
                         xs32->shape[0] != c ? xs32->shape[0] : xs32->shape[1],
                         xs32->shape[0] != c ? c : n);
    if (x->shape[1] < c)
        return bad_shape(&arr, "x needs at least one column per row of xs", x->shape[1], c);
    if (stats->shape[0] != 7)
        return bad_shape(&arr, "stats must have 7 rows", stats->shape[0], 7);
    if (stats->shape[1] < c)
        return bad_shape(&arr, "stats needs a column per row of xs", stats->shape[1], c);
    if (n1 < 0 || n1 > n)
        return bad_shape(&arr, "n1 must be between 0 and the number of samples", n1, n);
    const long long *ord = order->buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (ord[i] < 0 || ord[i] >= samples) {
            PyErr_Format(PyExc_ValueError, "order[%zd] = %lld is not a row of x (%zd rows)", i,
                         ord[i], samples);
            return release(&arr, NULL);
        }
    const Py_ssize_t ld = x->strides[0] / x->itemsize;
    Py_BEGIN_ALLOW_THREADS
    if (kx == F64)
        prepare64(x->buf, ld, ord, n, c, n1, xs->buf, xs32->buf, stats->buf, stats->shape[1]);
    else
        prepare32(x->buf, ld, ord, n, c, n1, xs->buf, xs32->buf, stats->buf, stats->shape[1]);
    Py_END_ALLOW_THREADS
    return release(&arr, Py_NewRef(Py_None));
}

PyDoc_STRVAR(count_above_doc,
             "count_above(xs, n1, thr, out)\n--\n\n"
             "For each row r of xs (float64 [rows, n]): the number of its first n1 entries above\n"
             "thr[r] minus the number of the others above it, into out (int64 [rows]).");

static PyObject *py_count_above(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ox, *othr, *oout;
    Py_ssize_t n1;
    if (!PyArg_ParseTuple(args, "OnOO:count_above", &ox, &n1, &othr, &oout))
        return NULL;
    Arrays arr = {.n = 0};
    Py_buffer *x, *thr, *out;
    if (!(x = take(&arr, ox, "xs", F64, 2, 0, 0)) ||
        !(thr = take(&arr, othr, "thr", F64, 1, 0, 0)) ||
        !(out = take(&arr, oout, "out", I64, 1, 1, 0)))
        return release(&arr, NULL);
    const Py_ssize_t rows = x->shape[0], n = x->shape[1];
    if (thr->shape[0] != rows)
        return bad_shape(&arr, "thr needs one entry per row of xs", thr->shape[0], rows);
    if (out->shape[0] != rows)
        return bad_shape(&arr, "out needs one entry per row of xs", out->shape[0], rows);
    if (n1 < 0 || n1 > n)
        return bad_shape(&arr, "n1 must be between 0 and the number of samples", n1, n);
    Py_BEGIN_ALLOW_THREADS
    count_above(x->buf, rows, n, n1, thr->buf, out->buf);
    Py_END_ALLOW_THREADS
    return release(&arr, Py_NewRef(Py_None));
}

/* Which of the target clones the loader chose on this CPU. */
static const char *dispatched(void)
{
#if MECHPROBE_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return "x86-64-v4 (AVX-512)";
    if (__builtin_cpu_supports("x86-64-v3"))
        return "x86-64-v3 (AVX2, FMA)";
    return "x86-64 (baseline)";
#else
    return "one build (no run-time dispatch on this platform)";
#endif
}

#ifndef MECHPROBE_FLAGS
#define MECHPROBE_FLAGS "unknown"
#endif
#if defined(__clang__)
#define COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER "GCC " __VERSION__
#else
#define COMPILER "unknown"
#endif

static PyMethodDef methods[] = {
    {"sums", py_sums, METH_VARARGS, sums_doc},
    {"prepare", py_prepare, METH_VARARGS, prepare_doc},
    {"count_above", py_count_above, METH_VARARGS, count_above_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native",
    "The probe solver's fused CPU kernels (see mechprobe.stats._kernels).", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "COMPILER", COMPILER) < 0 ||
        PyModule_AddStringConstant(m, "FLAGS", MECHPROBE_FLAGS) < 0 ||
        PyModule_AddStringConstant(m, "DISPATCH", dispatched()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
