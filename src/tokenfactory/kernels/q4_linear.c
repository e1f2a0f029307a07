/*
 * y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) for decode-sized M (1..8), with W kept in GGUF's
 * Q4_1 form: per 32 weights of a row a scale d, a minimum m and 32 4-bit codes q, w = d*q + m.
 *
 * A decode step is memory bound: the bf16 weights of the embedded model are ~212 MB a step;
 * the same weights as 4-bit codes plus per-block (d, m) are ~80 MB. Each block is expanded in
 * registers exactly as the loader dequantizes it (fp32 d*q + m, one rounding since d*q is
 * exact, then round-to-nearest-even to bf16), and the bf16 dot products and their summation
 * are those of skinny_linear.c's AVX512 tile, so at M = 1 the result is bit for bit the bf16
 * kernel's on the dequantized weights.
 *
 * Layout (built once at load time, see q4_linear.py): codes [N, K/2] bytes, block b of a row at
 * byte 16 b (byte j: q[j] low nibble, q[j+16] high nibble, as in GGUF); dm [N, K/32, 2] fp32.
 *
 * Plain C on purpose: no torch headers, so it compiles in about a second.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

typedef uint16_t bf16_t;

#define AI static inline __attribute__((always_inline))
#define MAX_M 8

/* Lane i of the result = horizontal sum of a[i] (the same tree as skinny_linear.c). */
#define TR(s) ((((s) & 3) << 2) | ((s) >> 2))
AI __m512 reduce16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++) {
        __m512 x = a[TR(2 * i)], y = a[TR(2 * i + 1)];
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
    }
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
}

/* The 32 bf16 weights of one block: low nibbles are weights 0..15, high nibbles 16..31.
 * The block's 16 possible values are computed once (d*q is exact in fp32, 11 x 4 significant
 * bits, so the fma rounds exactly where the loader's (d * q) + m does; then bf16 by
 * round-to-nearest-even) and the codes look them up (vpermw): far fewer instructions per
 * block than converting all 32 codes, which is what keeps this kernel memory bound. */
AI __m512bh dequant(const uint8_t *codes, const float *dm) {
    /* vpermw reads the low 5 bits of each index; the table holds its 16 values twice, so a
     * code byte as a whole (low nibble plus bit 4) indexes its low nibble's value */
    const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)codes));
    const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(w), _mm256_srli_epi16(w, 4), 1);
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(dm[0]), iota, _mm512_set1_ps(dm[1]));
    const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(v, v);
    return (__m512bh)_mm512_permutexvar_epi16(idx, table);
}

/* Rows n0 .. n0+nv-1 of W against all M rows of x; accumulator s = m * R + r holds
 * out[m, n0 + r]. Rows past nv repeat row n0+nv-1 (result discarded). */
AI void tile(const int M, const int R, const bf16_t *x, int64_t ldx, const uint8_t *codes,
             const float *dm, int64_t K, int64_t n0, int nv, const bf16_t *bias, bf16_t *out,
             int64_t ldo) {
    __m512 acc[16];
    for (int s = 0; s < 16; s++) acc[s] = _mm512_setzero_ps();
    const int64_t nb = K / 32;
    const uint8_t *cr[16];
    const float *dr[16];
    for (int r = 0; r < R; r++) {
        const int64_t n = n0 + (r < nv ? r : nv - 1);
        cr[r] = codes + n * (K / 2);
        dr[r] = dm + n * nb * 2;
    }
    for (int64_t b = 0; b < nb; b++) {
        __m512bh xv[MAX_M];
        for (int m = 0; m < M; m++) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * ldx + 32 * b);
        for (int r = 0; r < R; r++) {
            const __m512bh wv = dequant(cr[r] + 16 * b, dr[r] + 2 * b);
            for (int m = 0; m < M; m++)
                acc[m * R + r] = _mm512_dpbf16_ps(acc[m * R + r], wv, xv[m]);
        }
    }
    __m512 sum = reduce16(acc);
    if (bias) {
        __m256i b16 = _mm256_maskz_loadu_epi16((__mmask16)((1u << nv) - 1), bias + n0);
        __m512 bf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b16), 16));
        int idx[16];
        for (int s = 0; s < 16; s++) idx[s] = s % R;
        sum = _mm512_add_ps(sum, _mm512_permutexvar_ps(_mm512_loadu_si512(idx), bf));
    }
    bf16_t tmp[16];
    _mm256_storeu_si256((__m256i *)tmp, (__m256i)_mm512_cvtneps_pbh(sum));
    for (int m = 0; m < M; m++) memcpy(out + m * ldo + n0, tmp + m * R, (size_t)nv * 2);
}

/* R = rows of W per tile, as in skinny_linear.c: as many as fit 16 accumulators. */
#define DEFINE_RUN(M_, R_)                                                                      \
    static void run_m##M_(const bf16_t *x, int64_t ldx, const uint8_t *codes, const float *dm,  \
                          int64_t K, const bf16_t *bias, bf16_t *out, int64_t ldo, int64_t nb,  \
                          int64_t ne) {                                                         \
        int64_t n0 = nb;                                                                        \
        for (; n0 + (R_) <= ne; n0 += (R_))                                                     \
            tile(M_, R_, x, ldx, codes, dm, K, n0, R_, bias, out, ldo);                         \
        if (n0 < ne) tile(M_, R_, x, ldx, codes, dm, K, n0, (int)(ne - n0), bias, out, ldo);    \
    }
DEFINE_RUN(1, 8)
DEFINE_RUN(2, 8)
DEFINE_RUN(3, 5)
DEFINE_RUN(4, 4)
DEFINE_RUN(5, 3)
DEFINE_RUN(6, 2)
DEFINE_RUN(7, 2)
DEFINE_RUN(8, 2)

static const int ROWS[MAX_M + 1] = {0, 8, 8, 5, 4, 3, 2, 2, 2};
typedef void (*run_fn)(const bf16_t *, int64_t, const uint8_t *, const float *, int64_t,
                       const bf16_t *, bf16_t *, int64_t, int64_t, int64_t);
static const run_fn RUNS[MAX_M + 1] = {0,      run_m1, run_m2, run_m3, run_m4,
                                       run_m5, run_m6, run_m7, run_m8};

/* Below this many bytes of codes per thread a second thread costs more than it saves. */
#define MIN_BYTES_PER_THREAD (64 * 1024)

/* out[M, N] = x[M, K] @ W^T (+ bias), W as codes/dm above. x rows ldx elements apart, out rows
 * ldo. Returns 0 on success, -1 on unsupported arguments (nothing written). */
int tf_q4_1_linear(const bf16_t *x, int64_t M, int64_t ldx, const uint8_t *codes,
                   const float *dm, int64_t N, int64_t K, const bf16_t *bias, bf16_t *out,
                   int64_t ldo, int64_t nthreads) {
    if (M < 1 || M > MAX_M || N < 1 || K < 32 || K % 32) return -1;
    const int64_t step = ROWS[M];
    int64_t nt = nthreads < 1 ? 1 : nthreads;
    const int64_t bytes = N * (K / 2);
    if (nt > bytes / MIN_BYTES_PER_THREAD) nt = bytes / MIN_BYTES_PER_THREAD;
    if (nt < 1) nt = 1;
    /* equal shares of whole tiles: every row costs the same */
    const int64_t tiles = (N + step - 1) / step;
    if (nt > tiles) nt = tiles;
    if (nt == 1) {
        RUNS[M](x, ldx, codes, dm, K, bias, out, ldo, 0, N);
        return 0;
    }
#pragma omp parallel num_threads((int)nt)
    {
        const int64_t t = omp_get_thread_num();
        const int64_t nb = tiles * t / nt * step, ne0 = tiles * (t + 1) / nt * step;
        const int64_t ne = ne0 < N ? ne0 : N;
        if (nb < ne) RUNS[M](x, ldx, codes, dm, K, bias, out, ldo, nb, ne);
    }
    return 0;
}

/* The same call with its 11 arguments packed as int64 in one buffer (pointers as addresses). */
int tf_q4_1_linear_packed(const void *packed) {
    int64_t a[11];
    memcpy(a, packed, sizeof a);
    return tf_q4_1_linear((const bf16_t *)(intptr_t)a[0], a[1], a[2],
                          (const uint8_t *)(intptr_t)a[3], (const float *)(intptr_t)a[4], a[5],
                          a[6], (const bf16_t *)(intptr_t)a[7], (bf16_t *)(intptr_t)a[8], a[9],
                          a[10]);
}
