/* Fused CPU kernels of the probe solver (mechprobe.stats._newton and _chunks).
 *
 * Each kernel reads a unit's row once and does all its arithmetic on it while it is in cache;
 * the torch code in _newton.py and _chunks.py computes the same quantities operation by
 * operation and stays the path on accelerators and where no C compiler is found. Rows are
 * units, columns samples (the positives first); all arrays are C-contiguous. Compiled on
 * first use by mechprobe.stats._kernels, which says why these few loops are C.
 */
#include <math.h>
#include <stddef.h>

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
void sums64(const double *xs, ptrdiff_t rows, ptrdiff_t n, const double *a, const double *b,
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
void sums32(const float *xs, ptrdiff_t rows, ptrdiff_t n, const double *a, const double *b,
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
static void standardise(double *xs, float *xs32, ptrdiff_t n, ptrdiff_t n1, ptrdiff_t j0,
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
    void NAME(const T *x, ptrdiff_t ld, const long long *order, ptrdiff_t n, ptrdiff_t c,  \
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
void count_above(const double *xs, ptrdiff_t rows, ptrdiff_t n, ptrdiff_t n1, const double *thr,
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
