/* Fused elementwise ops for the CPU decode path: each replaces several PyTorch ops (and their
 * per-op dispatch cost, which dominates at a handful of rows) with one pass over the data.
 * bf16 in and out, float32 arithmetic, the same roundings as the unfused PyTorch sequence. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static inline float bf16_to_f32(uint16_t v) {
    union { uint32_t u; float f; } c = { .u = (uint32_t)v << 16 };
    return c.f;
}

static inline uint16_t f32_to_bf16(float f) {
    /* round to nearest even, NaN kept quiet, as PyTorch converts */
    union { uint32_t u; float f; } c = { .f = f };
    if ((c.u & 0x7fffffff) > 0x7f800000) return (uint16_t)((c.u >> 16) | 0x40);
    uint32_t lsb = (c.u >> 16) & 1;
    return (uint16_t)((c.u + 0x7fff + lsb) >> 16);
}

/* residual[r] = x[r] + residual[r] (rounded to bf16) when add != 0, else residual[r] = x[r];
 * out[r] = rmsnorm(residual[r]) * weight, for rows r < m of width n. */
int tf_add_rms_norm_bf16(const uint16_t *x, int64_t ldx, uint16_t *residual, int64_t ldr,
                         const uint16_t *weight, uint16_t *out, int64_t ldo, int64_t m,
                         int64_t n, float eps, int add) {
    for (int64_t r = 0; r < m; r++) {
        const uint16_t *xr = x + r * ldx;
        uint16_t *rr = residual + r * ldr;
        uint16_t *orow = out + r * ldo;
        float ss = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            float v = bf16_to_f32(xr[i]);
            if (add) v = bf16_to_f32(f32_to_bf16(v + bf16_to_f32(rr[i])));
            rr[i] = f32_to_bf16(v);
            ss += v * v;
        }
        float scale = 1.0f / sqrtf(ss / (float)n + eps);
        for (int64_t i = 0; i < n; i++) /* one rounding at the end, as F.rms_norm does */
            orow[i] = f32_to_bf16(bf16_to_f32(rr[i]) * scale * bf16_to_f32(weight[i]));
    }
    return 0;
}

/* out[r, i] = silu(gu[r, i]) * gu[r, n + i]: the gate and up halves of one fused matmul. */
int tf_silu_mul_bf16(const uint16_t *gu, int64_t ldg, uint16_t *out, int64_t ldo, int64_t m,
                     int64_t n) {
    for (int64_t r = 0; r < m; r++) {
        const uint16_t *g = gu + r * ldg;
        const uint16_t *u = g + n;
        uint16_t *o = out + r * ldo;
        for (int64_t i = 0; i < n; i++) {
            float a = bf16_to_f32(g[i]);
            float s = bf16_to_f32(f32_to_bf16(a / (1.0f + expf(-a))));
            o[i] = f32_to_bf16(s * bf16_to_f32(u[i]));
        }
    }
    return 0;
}
