/*
 * y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]) for bf16 operands and small M (1..8).
 *
 * Decode-time linears are memory bound: every weight byte is read once per call, so the
 * kernel streams W row-block by row-block, reuses each 64-byte weight load for all M
 * activation rows (which stay in L1) and accumulates in fp32 with AVX512-BF16 dot products.
 * Each tile keeps 16 zmm accumulators (M * R <= 16); a shuffle tree then turns them into one
 * vector of 16 sums, so the horizontal reduction costs ~3 shuffles/adds per output instead of
 * a full reduce per output. The result is rounded to bf16 once (round-to-nearest-even), as
 * F.linear does.
 *
 * Plain C on purpose: no torch headers, so it compiles in well under a second.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

typedef uint16_t bf16_t;

#define AI static inline __attribute__((always_inline))

#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif
/* Software prefetch: each weight line is prefetched this many bytes of W ahead of its use
 * (rounded to whole tiles: the same column, some tiles further down). Hardware prefetchers
 * restart at every 4 KiB page and do not keep up with a cold stream on their own. */
#ifndef PF_BYTES
#define PF_BYTES (32 * 1024)
#endif

/* Lane i of the result = horizontal sum of a[i]. The tree naturally yields lane 4j+i =
 * sum(input[4i+j]), so inputs are read in transposed order to land in natural order. */
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

/* One tile: rows n0 .. n0+nv-1 of W (nv <= R) against all M activation rows.
 * Accumulator s = m * R + r holds out[m, n0 + r]. Rows past nv re-read row n0+nv-1 (kept in
 * bounds, result discarded) so the hot loop has no per-row branches. */
AI void tile(const int M, const int R, const bf16_t *x, int64_t ldx, const bf16_t *w, int64_t K,
             int64_t n0, int nv, const bf16_t *bias, bf16_t *out, int64_t ldo, int64_t pf_bytes) {
    __m512 acc[16];
    for (int s = 0; s < 16; s++) acc[s] = _mm512_setzero_ps();
    const bf16_t *wr[16];
    for (int r = 0; r < R; r++) wr[r] = w + (n0 + (r < nv ? r : nv - 1)) * K;

    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512bh xv[8];
        for (int m = 0; m < M; m++) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
        for (int r = 0; r < R; r++) {
            const char *p = (const char *)(wr[r] + k);
            if (pf_bytes) _mm_prefetch(p + pf_bytes, PF_HINT);
            __m512bh wv = (__m512bh)_mm512_loadu_si512(p);
            for (int m = 0; m < M; m++)
                acc[m * R + r] = _mm512_dpbf16_ps(acc[m * R + r], wv, xv[m]);
        }
    }
    if (k < K) { /* K % 32 tail: masked-out lanes load as zero and add nothing */
        const __mmask32 km = (__mmask32)((1ull << (K - k)) - 1);
        __m512bh xv[8];
        for (int m = 0; m < M; m++) xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(km, x + m * ldx + k);
        for (int r = 0; r < R; r++) {
            __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(km, wr[r] + k);
            for (int m = 0; m < M; m++)
                acc[m * R + r] = _mm512_dpbf16_ps(acc[m * R + r], wv, xv[m]);
        }
    }

    __m512 sum = reduce16(acc);
    if (bias) {
        /* lane s needs bias[n0 + s % R]: load the tile's biases, widen bf16 -> fp32, spread */
        __m256i b16 = _mm256_maskz_loadu_epi16((__mmask16)((1u << nv) - 1), bias + n0);
        __m512 bf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b16), 16));
        int idx[16];
        for (int s = 0; s < 16; s++) idx[s] = s % R;
        sum = _mm512_add_ps(sum, _mm512_permutexvar_ps(_mm512_loadu_si512(idx), bf));
    }
    __m256i o = (__m256i)_mm512_cvtneps_pbh(sum);
    if (M == 1 && R == 16 && nv == 16) {
        _mm256_storeu_si256((__m256i *)(out + n0), o);
    } else {
        bf16_t tmp[16];
        _mm256_storeu_si256((__m256i *)tmp, o);
        for (int m = 0; m < M; m++) memcpy(out + m * ldo + n0, tmp + m * R, (size_t)nv * 2);
    }
}

/* Rows [nb, ne) of W for one M, R rows per tile; W has N rows in all. M and R are
 * compile-time constants in each instantiation, so the accumulators live in registers. */
#define DEFINE_RUN(M_, R_)                                                                      \
    static void run_m##M_(const bf16_t *x, int64_t ldx, const bf16_t *w, int64_t N, int64_t K,  \
                          const bf16_t *bias, bf16_t *out, int64_t ldo, int64_t nb, int64_t ne) { \
        const int64_t tile_bytes = (int64_t)(R_) * K * 2;                                       \
        const int64_t pf_tiles = (PF_BYTES + tile_bytes - 1) / tile_bytes;                      \
        const int64_t pf = pf_tiles * tile_bytes;                                               \
        int64_t n0 = nb;                                                                        \
        /* prefetch while the rows it touches exist (past this chunk is fine: still W) */       \
        for (; n0 + (R_) <= ne && n0 + (pf_tiles + 1) * (R_) <= N; n0 += (R_))                   \
            tile(M_, R_, x, ldx, w, K, n0, R_, bias, out, ldo, pf);                             \
        for (; n0 + (R_) <= ne; n0 += (R_))                                                     \
            tile(M_, R_, x, ldx, w, K, n0, R_, bias, out, ldo, 0);                              \
        if (n0 < ne) tile(M_, R_, x, ldx, w, K, n0, (int)(ne - n0), bias, out, ldo, 0);         \
    }

/* R = rows of W per tile: as many as fit 16 accumulators. */
DEFINE_RUN(1, 16)
DEFINE_RUN(2, 8)
DEFINE_RUN(3, 5)
DEFINE_RUN(4, 4)
DEFINE_RUN(5, 3)
DEFINE_RUN(6, 2)
DEFINE_RUN(7, 2)
DEFINE_RUN(8, 2)

static const int ROWS[9] = {0, 16, 8, 5, 4, 3, 2, 2, 2};

typedef void (*run_fn)(const bf16_t *, int64_t, const bf16_t *, int64_t, int64_t, const bf16_t *,
                       bf16_t *, int64_t, int64_t, int64_t);
static const run_fn RUNS[9] = {0, run_m1, run_m2, run_m3, run_m4, run_m5, run_m6, run_m7, run_m8};

/* ---------------------------------------------------------------------------------------------
 * AMX path. With several activation rows the AVX512 kernel becomes compute bound (M dot
 * products per weight load), so for larger M the W tile is fed to TDPBF16PS instead:
 * A = 16 rows x 32 k of W, loaded straight from its row-major layout (no weight repacking);
 * B = the matching 32 k of x, repacked once per call into VNNI pairs (16 rows x M pairs);
 * C = 16 x M fp32 accumulators. Needs K % 32 == 0; leftover rows (N % 16) go to AVX512.
 * ------------------------------------------------------------------------------------------- */
#ifdef TF_WITH_AMX
#include <sys/syscall.h>
#include <unistd.h>

/* Linux hands out AMX state only on request (once per process). */
int tf_amx_init(void) {
    const long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 0 : -1;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg_t;

/* Tile 0: C (16 rows of W x M fp32), tile 1: B (16 k-pairs x M pairs of x), tile 2: A (16
 * rows of W x 32 k). */
static void amx_config(int M) {
    tilecfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = 16; cfg.colsb[0] = (uint16_t)(M * 4);
    cfg.rows[1] = 16; cfg.colsb[1] = (uint16_t)(M * 4);
    cfg.rows[2] = 16; cfg.colsb[2] = 64;
    _tile_loadconfig(&cfg);
}

/* x[M, K] -> xp[K/32][16][M][2]: B tile of chunk c starts at xp + c * 32 * M. */
static void pack_x(const bf16_t *x, int64_t M, int64_t ldx, int64_t K, bf16_t *xp) {
    for (int64_t c = 0; c < K / 32; c++)
        for (int i = 0; i < 16; i++)
            for (int64_t m = 0; m < M; m++) {
                const bf16_t *src = x + m * ldx + c * 32 + 2 * i;
                bf16_t *dst = xp + ((c * 16 + i) * M + m) * 2;
                dst[0] = src[0];
                dst[1] = src[1];
            }
}

/* C tile (16 rows of n, M columns, row stride 64 bytes) -> out[m, n0 .. n0+15] (+ bias). */
static inline void amx_store(const float *cbuf, int64_t M, const bf16_t *bias, bf16_t *out,
                             int64_t ldo, int64_t n0) {
    __m512 b = _mm512_setzero_ps();
    if (bias)
        b = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bias + n0))), 16));
    const __m512i rows = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64,
                                          48, 32, 16, 0); /* row r of C at float offset 16 r */
    for (int64_t m = 0; m < M; m++) {
        __m512 v = _mm512_i32gather_ps(_mm512_add_epi32(rows, _mm512_set1_epi32((int)m)), cbuf, 4);
        v = _mm512_add_ps(v, b);
        _mm256_storeu_si256((__m256i *)(out + m * ldo + n0), (__m256i)_mm512_cvtneps_pbh(v));
    }
}

/* Rows [nb, ne) of W (N rows), ne - nb a multiple of 16; tiles configured by the caller.
 * One 16-row block at a time: with two, large K meant 32 concurrent row streams (one page
 * each at K >= 2048) and measured ~15% slower; at K = 576 one block is as fast. */
static void amx_run(const bf16_t *xp, int64_t M, const bf16_t *w, int64_t N, int64_t K,
                    const bf16_t *bias, bf16_t *out, int64_t ldo, int64_t nb, int64_t ne) {
    float cbuf[16 * 16] __attribute__((aligned(64)));
    const int64_t ldw = K * 2, ldb = M * 4, nc = K / 32;
    const int64_t pf_rows = (PF_BYTES + 16 * ldw - 1) / (16 * ldw) * 16;
    for (int64_t n0 = nb; n0 < ne; n0 += 16) {
        const bf16_t *w0 = w + n0 * K;
        const int pf = n0 + pf_rows + 16 <= N; /* as in the AVX512 path: stay inside W */
        _tile_zero(0);
        for (int64_t c = 0; c < nc; c++) {
            if (pf)
                for (int r = 0; r < 16; r++)
                    _mm_prefetch((const char *)(w0 + (pf_rows + r) * K + c * 32), PF_HINT);
            _tile_loadd(1, xp + c * 32 * M, ldb);
            _tile_loadd(2, w0 + c * 32, ldw);
            _tile_dpbf16ps(0, 2, 1);
        }
        _tile_stored(0, cbuf, 64);
        amx_store(cbuf, M, bias, out, ldo, n0);
    }
}
#endif

/* Below this many weight bytes per thread, waking another thread costs more than it saves. */
#ifndef MIN_BYTES_PER_THREAD
#define MIN_BYTES_PER_THREAD (128 * 1024)
#endif
/* Work is handed out in chunks of about this many weight bytes (clamped), several per thread:
 * a thread that starts late or gets preempted then delays the call by one chunk, not by its
 * whole static share. */
#define CHUNK_MIN_BYTES (32 * 1024)
#define CHUNK_MAX_BYTES (1024 * 1024)
#define CHUNKS_PER_THREAD 8

typedef struct {
    const bf16_t *x, *xp, *w, *bias;
    bf16_t *out;
    int64_t M, ldx, K, N, ldo;
    int64_t n_main;  /* rows done by the main kernel; AVX512 does [n_main, N) as a last unit */
    int64_t chunk;   /* rows per unit of work */
    int64_t nchunks, nunits;
    int64_t next;    /* shared work counter */
    int amx;
} job_t;

static void work(job_t *j) {
    const run_fn run = RUNS[j->M];
#ifdef TF_WITH_AMX
    if (j->amx) amx_config((int)j->M); /* tile config is per thread */
#endif
    for (int64_t u; (u = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->nunits;) {
        if (u == j->nchunks) {
            run(j->x, j->ldx, j->w, j->N, j->K, j->bias, j->out, j->ldo, j->n_main, j->N);
            continue;
        }
        const int64_t nb = u * j->chunk;
        const int64_t ne = nb + j->chunk < j->n_main ? nb + j->chunk : j->n_main;
#ifdef TF_WITH_AMX
        if (j->amx) {
            amx_run(j->xp, j->M, j->w, j->N, j->K, j->bias, j->out, j->ldo, nb, ne);
            continue;
        }
#endif
        run(j->x, j->ldx, j->w, j->N, j->K, j->bias, j->out, j->ldo, nb, ne);
    }
#ifdef TF_WITH_AMX
    if (j->amx) _tile_release(); /* leave the thread's AMX state clean for others */
#endif
}

/* out[M, N] = x[M, K] @ w[N, K]^T (+ bias). x rows are ldx elements apart, out rows ldo; w and
 * bias are contiguous. use_amx: 0 = AVX512 only, 1 = AMX where the shape allows.
 * Returns 0 on success, -1 on unsupported arguments (nothing written). */
int tf_skinny_linear_bf16(const bf16_t *x, int64_t M, int64_t ldx, const bf16_t *w, int64_t N,
                          int64_t K, const bf16_t *bias, bf16_t *out, int64_t ldo,
                          int64_t nthreads, int64_t use_amx) {
    if (M < 1 || M > 8 || N < 1 || K < 1) return -1;
    job_t j = {.x = x, .w = w, .bias = bias, .out = out, .M = M, .ldx = ldx, .K = K, .N = N,
               .ldo = ldo};
    const int64_t row_bytes = K * 2, bytes = N * row_bytes;
    int64_t nt = nthreads < 1 ? 1 : nthreads;
    if (nt > bytes / MIN_BYTES_PER_THREAD) nt = bytes / MIN_BYTES_PER_THREAD;
    if (nt < 1) nt = 1;

#ifdef TF_WITH_AMX
    bf16_t *xp = NULL; /* x repacked for the B tiles: M * K * 2 bytes, 72 KiB at K = 4608 */
    if (use_amx && K % 32 == 0 && N >= 16 &&
        (xp = aligned_alloc(64, (size_t)((M * K * 2 + 63) / 64 * 64))) != NULL) {
        pack_x(x, M, ldx, K, xp);
        j.xp = xp;
        j.amx = 1;
    }
#else
    (void)use_amx;
#endif
    /* AMX covers whole 16-row blocks; AVX512 does the < 16 leftover rows */
    const int64_t step = j.amx ? 16 : ROWS[M];
    j.n_main = j.amx ? N / 16 * 16 : N;
    j.chunk = j.n_main;
    if (nt > 1) {
        int64_t cb = bytes / (nt * CHUNKS_PER_THREAD);
        cb = cb < CHUNK_MIN_BYTES ? CHUNK_MIN_BYTES : cb > CHUNK_MAX_BYTES ? CHUNK_MAX_BYTES : cb;
        j.chunk = (cb / row_bytes + step - 1) / step * step;
        if (j.chunk < step) j.chunk = step;
    }
    j.nchunks = (j.n_main + j.chunk - 1) / j.chunk;
    j.nunits = j.nchunks + (j.n_main < N);
    if (nt > j.nunits) nt = j.nunits;

    if (nt == 1) {
        work(&j); /* no OpenMP region at all: entering one costs ~1 us even for one thread */
    } else {
#pragma omp parallel num_threads((int)nt)
        work(&j);
    }
#ifdef TF_WITH_AMX
    free(xp);
#endif
    return 0;
}

/* The same call with its 11 arguments packed as int64 in one buffer (pointers as addresses).
 * ctypes converts one bytes argument in a fraction of the time it takes for eleven. */
int tf_skinny_linear_bf16_packed(const void *packed) {
    int64_t a[11];
    memcpy(a, packed, sizeof a);
    return tf_skinny_linear_bf16((const bf16_t *)(intptr_t)a[0], a[1], a[2],
                                 (const bf16_t *)(intptr_t)a[3], a[4], a[5],
                                 (const bf16_t *)(intptr_t)a[6], (bf16_t *)(intptr_t)a[7], a[8],
                                 a[9], a[10]);
}
