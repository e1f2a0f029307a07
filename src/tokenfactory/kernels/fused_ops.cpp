/* Fused residual-add + RMSNorm for the CPU decode path: it replaces three PyTorch ops (and
 * their per-op dispatch cost, which dominates at a handful of rows) with one pass over the data.
 * bf16 in and out, float32 arithmetic, the same roundings as the unfused PyTorch sequence.
 * AVX2 (8 floats per vector) with a scalar tail, for x86-64-v3 CPUs (target pragma after the
 * headers, see skinny_linear.cpp). No fused multiply-adds: the library is built with
 * -ffp-contract=off, so each product rounds where PyTorch's ops round it. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#pragma GCC target("arch=x86-64-v3")

#include "kernels.h"

static inline float bf16_to_f32(uint16_t v) {
    union { uint32_t u; float f; } c = {.u = (uint32_t)v << 16};
    return c.f;
}

static inline uint16_t f32_to_bf16(float f) {
    /* round to nearest even, NaN kept quiet, as PyTorch converts */
    union { uint32_t u; float f; } c = { .f = f };
    if ((c.u & 0x7fffffff) > 0x7f800000) return (uint16_t)((c.u >> 16) | 0x40);
    uint32_t lsb = (c.u >> 16) & 1;
    return (uint16_t)((c.u + 0x7fff + lsb) >> 16);
}

static inline __m256 load8_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* f32_to_bf16 on 8 lanes: round to nearest even, NaN made quiet. */
static inline __m128i round8_bf16(__m256 v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
    __m256i quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
    __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
    __m256i r = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, nan), 16);
    /* pack the 8 low halves: packus works per 128-bit lane, so fix the order after */
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    return _mm256_castsi256_si128(packed);
}

static inline void store8_bf16(uint16_t *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, round8_bf16(v));
}

/* v rounded to bf16 and back: the value a bf16 tensor would hold. */
static inline __m256 as_bf16(__m256 v) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(round8_bf16(v)), 16));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* residual[r] = x[r] + residual[r] (rounded to bf16) when add != 0, else residual[r] = x[r];
 * out[r] = rmsnorm(residual[r]) * weight, for rows r < m of width n. */
int tf_add_rms_norm_bf16(const uint16_t *x, int64_t ldx, uint16_t *residual, int64_t ldr,
                         const uint16_t *weight, uint16_t *out, int64_t ldo, int64_t m,
                         int64_t n, float eps, int add) {
    int64_t nv = n - n % 8;
    for (int64_t r = 0; r < m; r++) {
        const uint16_t *xr = x + r * ldx;
        uint16_t *rr = residual + r * ldr;
        uint16_t *orow = out + r * ldo;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < nv; i += 8) {
            __m256 v = load8_bf16(xr + i);
            if (add) v = as_bf16(_mm256_add_ps(v, load8_bf16(rr + i)));
            store8_bf16(rr + i, v);
            acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
        }
        float ss = hsum8(acc);
        for (int64_t i = nv; i < n; i++) {
            float v = bf16_to_f32(xr[i]);
            if (add) v = bf16_to_f32(f32_to_bf16(v + bf16_to_f32(rr[i])));
            rr[i] = f32_to_bf16(v);
            ss += v * v;
        }
        float scale = 1.0f / sqrtf(ss / (float)n + eps);
        __m256 sv = _mm256_set1_ps(scale);
        for (int64_t i = 0; i < nv; i += 8) /* one rounding at the end, as F.rms_norm does */
            store8_bf16(orow + i,
                        _mm256_mul_ps(_mm256_mul_ps(load8_bf16(rr + i), sv), load8_bf16(weight + i)));
        for (int64_t i = nv; i < n; i++)
            orow[i] = f32_to_bf16(bf16_to_f32(rr[i]) * scale * bf16_to_f32(weight[i]));
    }
    return 0;
}

/* RoPE on the q and k heads of m decode rows of the fused q/k/v projection, with K and V
 * written to their cache slots: the decode stack's (ops.cpp) replacement for PyTorch's
 * x * cos + roll(x, d/2) * sin and two index_copy_ calls. qkv rows hold heads q heads, then
 * kv_heads k heads, then kv_heads v heads, d wide each; cos and sin are [m, d] bf16 rows (sin
 * carries the rotation's sign, as models.rope.cos_sin builds it). q goes to q_out [m, heads,
 * d]; k and v to row slots[r] of caches laid out [slots, kv_heads, d]. Both products round to
 * bf16, then their sum does, exactly as the three PyTorch ops on bf16 tensors do.
 * Returns -2, with nothing written, for a slot outside [0, num_slots). */
static inline void rope_row(const uint16_t *x, const uint16_t *cos, const uint16_t *sin,
                            uint16_t *out, int64_t d) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < d; i += 8) {
        /* roll(x, half)[i] = x[i - half] (mod d): the other half of the head */
        const int64_t j = i < half ? i + half : i - half;
        __m256 a = as_bf16(_mm256_mul_ps(load8_bf16(x + i), load8_bf16(cos + i)));
        __m256 b = as_bf16(_mm256_mul_ps(load8_bf16(x + j), load8_bf16(sin + i)));
        store8_bf16(out + i, _mm256_add_ps(a, b));
    }
}

int tf_rope_kv_write_bf16(const uint16_t *qkv, int64_t ldqkv, const uint16_t *cos,
                          const uint16_t *sin, int64_t m, int64_t heads, int64_t kv_heads,
                          int64_t d, uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache,
                          const int64_t *slots, int64_t num_slots) {
    if (d % 16 || d < 16) return -1; /* whole vectors in each half */
    for (int64_t r = 0; r < m; r++)
        if (slots[r] < 0 || slots[r] >= num_slots) return -2;
    const int64_t row = kv_heads * d; /* elements per cache slot */
    for (int64_t r = 0; r < m; r++) {
        const uint16_t *x = qkv + r * ldqkv, *c = cos + r * d, *s = sin + r * d;
        for (int64_t h = 0; h < heads; h++) rope_row(x + h * d, c, s, q_out + (r * heads + h) * d, d);
        uint16_t *kr = k_cache + slots[r] * row;
        for (int64_t h = 0; h < kv_heads; h++) rope_row(x + (heads + h) * d, c, s, kr + h * d, d);
        memcpy(v_cache + slots[r] * row, x + (heads + kv_heads) * d, (size_t)row * 2);
    }
    return 0;
}
