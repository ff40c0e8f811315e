/*
 * Fused CPU kernels of a hidden layer's tail, for trainer/fused.py (which compiles this file with
 * the system C compiler on first use and calls it through ctypes).
 *
 *   bn_relu_drop_fwd / _bwd: batch norm (training mode, batch statistics) -> ReLU -> inverted dropout
 *   relu_drop_fwd / _bwd:    (+ bias) -> ReLU -> inverted dropout, the bias gradient in the same pass
 *   bias_add, column_sums:   the output layer's bias and its gradient
 *
 * Tensors are float32, row-major (n, c), contiguous. The dropout mask is not drawn here: the caller
 * passes the layer's 16-bit uniform integers u (numpy's PCG64 words, as InvertedDropout draws them)
 * and an element is kept when u >= level, scaled by `scale` = 1 / (1 - p'). u == NULL: no dropout.
 *
 * ReLU is written v <= 0 ? 0 : v, so that a NaN passes through as in PyTorch (divergence stays visible).
 * The backward passes need no mask: y = relu(v) * m with m in {0, scale}, scale > 0, so
 * dy/dv = scale where y > 0 and 0 elsewhere (PyTorch's ReLU has gradient 0 at v = 0 too).
 *
 * Every loop runs over columns innermost, so the compiler vectorizes it (the per-column sums too:
 * one accumulator per column). -fno-trapping-math lets it turn the compares into blends.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
/*
 * one build for every x86-64 node: AVX-512 and AVX2 copies, the best one the CPU has picked at load
 * time (AVX-512 over AVX2: batch norm's passes 13.6 -> 11.2 us forward, 15.7 -> 12.0 us backward on
 * 128 x 256, measured on this project's Xeon)
 */
#define KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KERNEL
#endif

/*
 * Training-mode batch norm over the rows, then ReLU, then the dropout mask:
 *   mean_j = sum_i z_ij / n,  var_j = sum_i (z_ij - mean_j)^2 / n (biased, two passes),
 *   invstd_j = 1 / sqrt(var_j + eps),  a_j = gamma_j invstd_j,  b_j = beta_j - mean_j a_j,
 *   y_ij = max(z_ij a_j + b_j, 0) * m_ij.
 * Running averages: r <- (1 - momentum) r + momentum s, with the unbiased variance var n / (n - 1);
 * batches (num_batches_tracked) += 1.
 * stats (3c floats) receives mean, invstd and a scratch row; the backward pass reads the first two.
 */
KERNEL
void bn_relu_drop_fwd(const float *restrict z, float *restrict y, int64_t n, int64_t c,
                      const float *restrict gamma, const float *restrict beta,
                      float *restrict running_mean, float *restrict running_var, int64_t *restrict batches,
                      double momentum, double eps, const uint16_t *restrict u, int32_t level, float scale,
                      float *restrict stats)
{
    *batches += 1;
    float *restrict mean = stats, *restrict invstd = stats + c, *restrict b = stats + 2 * c;
    const float inv_n = 1.0f / (float)n;
    for (int64_t j = 0; j < c; j++) { mean[j] = 0.f; invstd[j] = 0.f; }
    for (int64_t i = 0; i < n; i++) {
        const float *restrict zr = z + i * c;
        for (int64_t j = 0; j < c; j++) mean[j] += zr[j];
    }
    for (int64_t j = 0; j < c; j++) mean[j] *= inv_n;
    for (int64_t i = 0; i < n; i++) {
        const float *restrict zr = z + i * c;
        for (int64_t j = 0; j < c; j++) { const float d = zr[j] - mean[j]; invstd[j] += d * d; }
    }
    const double unbiased = (double)n / (double)(n - 1);
    float a[c];
    for (int64_t j = 0; j < c; j++) {
        const float var = invstd[j] * inv_n;
        running_mean[j] = (float)((1.0 - momentum) * running_mean[j] + momentum * mean[j]);
        running_var[j] = (float)((1.0 - momentum) * running_var[j] + momentum * var * unbiased);
        invstd[j] = 1.0f / sqrtf(var + (float)eps);
        a[j] = gamma[j] * invstd[j];
        b[j] = beta[j] - mean[j] * a[j];
    }
    for (int64_t i = 0; i < n; i++) {
        const float *restrict zr = z + i * c;
        float *restrict yr = y + i * c;
        if (u) {
            const uint16_t *restrict ur = u + i * c;
            for (int64_t j = 0; j < c; j++) {
                const float v = zr[j] * a[j] + b[j];
                const float m = ur[j] >= (uint16_t)level ? scale : 0.f;
                yr[j] = (v <= 0.f ? 0.f : v) * m;
            }
        } else {
            for (int64_t j = 0; j < c; j++) { const float v = zr[j] * a[j] + b[j]; yr[j] = v <= 0.f ? 0.f : v; }
        }
    }
}

/*
 * The gradients of bn_relu_drop_fwd, from gy = dL/dy, the input z, the output y and the stats:
 *   g_ij = gy_ij * scale where y_ij > 0 (or NaN), else 0   (through dropout and ReLU)
 *   dbeta_j = sum_i g_ij,  dgamma_j = sum_i g_ij xhat_ij,  xhat_ij = (z_ij - mean_j) invstd_j
 *   gz_ij = gamma_j invstd_j (g_ij - dbeta_j / n - xhat_ij dgamma_j / n)
 * gz may be gy (in place): the second pass reads each element of gy before it writes it.
 */
KERNEL
void bn_relu_drop_bwd(const float *gy, const float *restrict z, const float *restrict y, int64_t n,
                      int64_t c, const float *restrict gamma, const float *restrict stats, float scale,
                      float *gz, float *restrict dgamma, float *restrict dbeta)
{
    const float *restrict mean = stats, *restrict invstd = stats + c;
    const float inv_n = 1.0f / (float)n;
    float sum_gd[c];  /* sum_i g_ij (z_ij - mean_j) */
    for (int64_t j = 0; j < c; j++) { sum_gd[j] = 0.f; dbeta[j] = 0.f; }
    for (int64_t i = 0; i < n; i++) {
        const float *restrict g = gy + i * c, *restrict zr = z + i * c, *restrict yr = y + i * c;
        for (int64_t j = 0; j < c; j++) {
            const float gs = g[j] * scale;
            const float ga = yr[j] <= 0.f ? 0.f : gs;
            dbeta[j] += ga;
            sum_gd[j] += ga * (zr[j] - mean[j]);
        }
    }
    float k[c], kb[c], kx[c];
    for (int64_t j = 0; j < c; j++) {
        dgamma[j] = sum_gd[j] * invstd[j];
        k[j] = gamma[j] * invstd[j];
        kb[j] = dbeta[j] * inv_n;
        kx[j] = dgamma[j] * inv_n * invstd[j];  /* xhat dgamma / n = (z - mean) kx */
    }
    for (int64_t i = 0; i < n; i++) {
        const float *g = gy + i * c, *restrict zr = z + i * c, *restrict yr = y + i * c;
        float *o = gz + i * c;
        for (int64_t j = 0; j < c; j++) {
            const float gs = g[j] * scale;
            const float ga = yr[j] <= 0.f ? 0.f : gs;
            o[j] = k[j] * (ga - kb[j] - (zr[j] - mean[j]) * kx[j]);
        }
    }
}

/*
 * y = max(h + b, 0) * m over n rows of c (b: the Linear's bias, NULL: none; m from u as above,
 * u == NULL: no dropout). h is the Linear's product x W^T: the bias is added here, in the same pass
 * as the ReLU, instead of by the product (addmm's copy of the bias into its output, a pass of its
 * own). y may be h (in place): each element is read before it is written.
 */
KERNEL
void relu_drop_fwd(const float *h, float *y, int64_t n, int64_t c, const float *restrict bias,
                   const uint16_t *restrict u, int32_t level, float scale)
{
    for (int64_t i = 0; i < n; i++) {
        const float *hr = h + i * c;
        float *yr = y + i * c;
        const uint16_t *restrict ur = u ? u + i * c : NULL;
        for (int64_t j = 0; j < c; j++) {
            const float v = bias ? hr[j] + bias[j] : hr[j];
            const float r = v <= 0.f ? 0.f : v;
            yr[j] = ur ? r * (ur[j] >= (uint16_t)level ? scale : 0.f) : r;
        }
    }
}

/* z_ij += b_j: the output layer's bias, added to its product x W^T in place */
KERNEL
void bias_add(float *restrict z, int64_t n, int64_t c, const float *restrict bias)
{
    for (int64_t i = 0; i < n; i++) {
        float *restrict zr = z + i * c;
        for (int64_t j = 0; j < c; j++) zr[j] += bias[j];
    }
}

#define SUM_BLOCK 16  /* rows summed in float before a double accumulator takes them */

/*
 * The bias gradient's summation, one block of `rows` (<= SUM_BLOCK) rows of c at a time: their
 * float sum per column, in row order, added to the double accumulators acc. A whole sum so made
 * keeps the error of a 16-term float sum for any batch size (a full-batch epoch included).
 */
static inline void add_block(const float *restrict g, int64_t rows, int64_t c, float *restrict part,
                             double *restrict acc)
{
    for (int64_t j = 0; j < c; j++) part[j] = 0.f;
    for (int64_t i = 0; i < rows; i++) {
        const float *restrict gr = g + i * c;
        for (int64_t j = 0; j < c; j++) part[j] += gr[j];
    }
    for (int64_t j = 0; j < c; j++) acc[j] += part[j];
}

/* out_j = sum_i g_ij (the output layer's, or a batch-norm layer's, bias gradient), by add_block */
KERNEL
void column_sums(const float *restrict g, int64_t n, int64_t c, float *restrict out)
{
    double acc[c];
    float part[c];
    for (int64_t j = 0; j < c; j++) acc[j] = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += SUM_BLOCK)
        add_block(g + i0 * c, i0 + SUM_BLOCK < n ? SUM_BLOCK : n - i0, c, part, acc);
    for (int64_t j = 0; j < c; j++) out[j] = (float)acc[j];
}

/*
 * gh = gy * scale where y > 0 (or NaN, as PyTorch's ReLU backward), else 0, over n rows of c; gh may
 * be gy (in place). dbias (NULL: none) = column sums of gh, as column_sums makes them: each block of
 * rows is summed (add_block) right after it is written, while it is in the cache.
 */
KERNEL
void relu_drop_bwd(const float *gy, const float *restrict y, int64_t n, int64_t c, float scale, float *gh,
                   float *restrict dbias)
{
    double acc[dbias ? c : 1];
    float part[dbias ? c : 1];
    if (dbias)
        for (int64_t j = 0; j < c; j++) acc[j] = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += SUM_BLOCK) {
        const int64_t rows = i0 + SUM_BLOCK < n ? SUM_BLOCK : n - i0;
        for (int64_t i = i0; i < i0 + rows; i++) {
            const float *gr = gy + i * c, *restrict yr = y + i * c;
            float *hr = gh + i * c;
            for (int64_t j = 0; j < c; j++) hr[j] = yr[j] <= 0.f ? 0.f : gr[j] * scale;
        }
        if (dbias)
            add_block(gh + i0 * c, rows, c, part, acc);
    }
    if (dbias)
        for (int64_t j = 0; j < c; j++) dbias[j] = (float)acc[j];
}

/*
 * numpy's PCG64 (XSL-RR 128/64), drawn in place of Generator.bit_generator.random_raw(n): the same
 * words and the same state afterwards, read and written through the bit generator's own state
 * (`bit_generator.ctypes.state_address`, numpy's `pcg64_state`). Four interleaved lanes, each
 * advanced four steps at a time (s <- s M^4 + inc (M^3 + M^2 + M + 1)), keep the multiplier busy
 * where numpy's loop waits on one 128-bit multiplication after another. trainer/fused.py checks
 * the words against numpy's once per process before using this (pcg64_words_match there).
 */
#if defined(__SIZEOF_INT128__)
typedef __uint128_t u128;
struct pcg64_random { u128 state; u128 inc; };
struct numpy_pcg64_state { struct pcg64_random *pcg_state; int has_uint32; uint32_t uinteger; };

static inline uint64_t xsl_rr(u128 s)
{
    const uint64_t x = (uint64_t)(s >> 64) ^ (uint64_t)s;
    const unsigned rot = (unsigned)(s >> 122);
    return (x >> rot) | (x << ((-rot) & 63u));
}

int pcg64_available(void) { return 1; }

void pcg64_fill(void *state_address, uint64_t *restrict out, int64_t n)
{
    struct pcg64_random *rng = ((struct numpy_pcg64_state *)state_address)->pcg_state;
    const u128 m = ((u128)2549297995355413924ULL << 64) + 4865540595714422341ULL, inc = rng->inc;
    const u128 m2 = m * m, m4 = m2 * m2, c4 = inc * (m2 * m + m2 + m + 1);
    u128 last = rng->state;
    u128 l0 = last * m + inc, l1 = l0 * m + inc, l2 = l1 * m + inc, l3 = l2 * m + inc;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        out[i] = xsl_rr(l0); out[i + 1] = xsl_rr(l1); out[i + 2] = xsl_rr(l2); out[i + 3] = xsl_rr(l3);
        last = l3;
        l0 = l0 * m4 + c4; l1 = l1 * m4 + c4; l2 = l2 * m4 + c4; l3 = l3 * m4 + c4;
    }
    const u128 lanes[4] = {l0, l1, l2, l3};
    for (int64_t j = 0; i < n; i++, j++) { out[i] = xsl_rr(lanes[j]); last = lanes[j]; }
    rng->state = last;
}
#else
int pcg64_available(void) { return 0; }
void pcg64_fill(void *state_address, uint64_t *out, int64_t n) { (void)state_address; (void)out; (void)n; }
#endif
