/* Entry points of the kernel files, for ops.cpp (which registers them as torch operators).
 * Each returns 0 on success and a negative code, with nothing written, for arguments it does
 * not take. */
#pragma once
#include <stdint.h>

typedef uint16_t bf16_t;

/* skinny_linear.cpp: out[M, N] = x[M, K] @ w[N, K]^T (+ bias), bf16. use_amx: AMX tiles where
 * this build has them (M > 8 needs them). */
int tf_skinny_linear_bf16(const bf16_t *x, int64_t M, int64_t ldx, const bf16_t *w, int64_t N,
                          int64_t K, const bf16_t *bias, bf16_t *out, int64_t ldo,
                          int64_t nthreads, int64_t use_amx);
/* The same with W as Q4_1 codes [N, K/2] and scales [N, 2, K/32] (skinny_linear.cpp's layout)
 * on int8 activations (x quantized per block of 32), M <= 1024, K % 32 == 0. */
int tf_skinny_linear_q4_1(const bf16_t *x, int64_t M, int64_t ldx, const uint8_t *codes,
                          const float *dm, int64_t N, int64_t K, const bf16_t *bias, bf16_t *out,
                          int64_t ldo, int64_t nthreads);
/* The same with W as Q8_0 codes [N, K] (int8) and scales [N, K/32], M <= 1024, K % 32 == 0. */
int tf_skinny_linear_q8_0(const bf16_t *x, int64_t M, int64_t ldx, const int8_t *codes,
                          const float *d, int64_t N, int64_t K, const bf16_t *bias, bf16_t *out,
                          int64_t ldo, int64_t nthreads);
/* 0 once Linux granted this process AMX state; -1 without it or in a build without AMX. */
int tf_amx_init(void);

/* paged_attention.cpp: addresses as integers, strides in elements. */
typedef struct {
    int64_t q, q_sd, q_sh; /* q base address; strides (elements) of sequence and head */
    int64_t k, v, num_blocks, block_size, kv_heads, head_dim;
    int64_t bt, bt_sd, max_blocks, ctx; /* block tables (int64) and context lengths (int64) */
    int64_t D, heads;
    int64_t out, o_sd, o_sh;
    double scale;
    int64_t q_bf16, cache_bf16, out_bf16, nthreads;
} tf_paged_args;
/* -1: shapes it does not take; -2: a context length or block id out of range. */
int tf_paged_decode_attention(const tf_paged_args *a);

/* fused_ops.cpp: residual = x (+ residual), out = rms_norm(residual) * weight, bf16 rows. */
int tf_add_rms_norm_bf16(const uint16_t *x, int64_t ldx, uint16_t *residual, int64_t ldr,
                         const uint16_t *weight, uint16_t *out, int64_t ldo, int64_t m,
                         int64_t n, float eps, int add);
/* fused_ops.cpp: RoPE on the q/k heads of m rows of the fused q/k/v projection; q to q_out
 * [m, heads, d], k and v to their cache slots (caches [num_slots, kv_heads, d]). -2: a slot
 * out of range. */
int tf_rope_kv_write_bf16(const uint16_t *qkv, int64_t ldqkv, const uint16_t *cos,
                          const uint16_t *sin, int64_t m, int64_t heads, int64_t kv_heads,
                          int64_t d, uint16_t *q_out, uint16_t *k_cache, uint16_t *v_cache,
                          const int64_t *slots, int64_t num_slots);
