// The native kernels as torch operators (namespace tokenfactory): argument checks, output
// allocation and the calls into the kernel files, which include no torch headers. The only
// file of the library that includes torch: with pybind11 left out (no torch/extension.h) it
// compiles in a few seconds, and the library loads with torch.ops.load_library.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/silu.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "kernels.h"

namespace {

using at::Tensor;

const bf16_t *bf16_ptr(const Tensor &t) { return static_cast<const bf16_t *>(t.data_ptr()); }
bf16_t *bf16_mut(Tensor &t) { return static_cast<bf16_t *>(t.data_ptr()); }

void check_bf16_cpu(const Tensor &t, const char *name) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.device().is_cpu(), name,
              " must be a bf16 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

void check_bias(const std::optional<Tensor> &bias, int64_t n) {
  if (!bias) return;
  check_bf16_cpu(*bias, "bias");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n && bias->is_contiguous(),
              "bias must be a contiguous [N] tensor");
}

// x [M, K] with contiguous rows; returns (M, K).
std::pair<int64_t, int64_t> check_x(const Tensor &x) {
  check_bf16_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [M, K] with contiguous rows");
  return {x.size(0), x.size(1)};
}

void check_out(const Tensor &out, int64_t m, int64_t n) {
  check_bf16_cpu(out, "out");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == m && out.size(1) == n && out.stride(1) == 1,
              "out must be [M, N] with contiguous rows");
}

void linear_into(const Tensor &x, const Tensor &w, const std::optional<Tensor> &bias,
                 bool use_amx, Tensor &out) {
  const auto [m, k] = check_x(x);
  check_bf16_cpu(w, "w");
  TORCH_CHECK(w.dim() == 2 && w.size(1) == k && w.is_contiguous() && k > 0 && w.size(0) > 0,
              "w must be a contiguous [N, K] tensor matching x");
  const int64_t n = w.size(0);
  check_bias(bias, n);
  check_out(out, m, n);
  if (m == 0) return;
  const int rc = tf_skinny_linear_bf16(bf16_ptr(x), m, x.stride(0), bf16_ptr(w), n, k,
                                       bias ? bf16_ptr(*bias) : nullptr, bf16_mut(out),
                                       out.stride(0), at::get_num_threads(), use_amx);
  TORCH_CHECK(rc == 0, "skinny_linear: this build does not take M = ", m, ", K = ", k,
              " (more than 8 rows need AMX and K % 32 == 0)");
}

Tensor skinny_linear(const Tensor &x, const Tensor &w, const std::optional<Tensor> &bias,
                     bool use_amx) {
  Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  linear_into(x, w, bias, use_amx, out);
  return out;
}

void skinny_linear_out(const Tensor &x, const Tensor &w, const std::optional<Tensor> &bias,
                       bool use_amx, Tensor out) {
  linear_into(x, w, bias, use_amx, out);
}

Tensor skinny_linear_q4_1(const Tensor &x, const Tensor &codes, const Tensor &dm,
                          const std::optional<Tensor> &bias) {
  const auto [m, k] = check_x(x);
  TORCH_CHECK(m >= 1 && m <= 1024, "skinny_linear_q4_1 takes 1 to 1024 rows, got ", m);
  TORCH_CHECK(k > 0 && k % 32 == 0, "K must be a positive multiple of 32, got ", k);
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.device().is_cpu() &&
                  codes.is_contiguous() && codes.dim() == 2 && codes.size(1) * 2 == k,
              "codes must be a contiguous uint8 [N, K/2] CPU tensor");
  const int64_t n = codes.size(0);
  TORCH_CHECK(dm.scalar_type() == at::kFloat && dm.device().is_cpu() && dm.is_contiguous() &&
                  dm.dim() == 3 && dm.size(0) == n && dm.size(1) == 2 && dm.size(2) == k / 32,
              "dm must be a contiguous float32 [N, 2, K/32] CPU tensor");
  check_bias(bias, n);
  Tensor out = at::empty({m, n}, x.options());
  const int rc = tf_skinny_linear_q4_1(
      bf16_ptr(x), m, x.stride(0), static_cast<const uint8_t *>(codes.data_ptr()),
      static_cast<const float *>(dm.data_ptr()), n, k, bias ? bf16_ptr(*bias) : nullptr,
      bf16_mut(out), n, at::get_num_threads());
  TORCH_CHECK(rc == 0, "skinny_linear_q4_1: unsupported arguments");
  return out;
}

Tensor skinny_linear_q8_0(const Tensor &x, const Tensor &codes, const Tensor &d,
                          const std::optional<Tensor> &bias) {
  const auto [m, k] = check_x(x);
  TORCH_CHECK(m >= 1 && m <= 1024, "skinny_linear_q8_0 takes 1 to 1024 rows, got ", m);
  TORCH_CHECK(k > 0 && k % 32 == 0, "K must be a positive multiple of 32, got ", k);
  TORCH_CHECK(codes.scalar_type() == at::kChar && codes.device().is_cpu() &&
                  codes.is_contiguous() && codes.dim() == 2 && codes.size(1) == k,
              "codes must be a contiguous int8 [N, K] CPU tensor");
  const int64_t n = codes.size(0);
  TORCH_CHECK(d.scalar_type() == at::kFloat && d.device().is_cpu() && d.is_contiguous() &&
                  d.dim() == 2 && d.size(0) == n && d.size(1) == k / 32,
              "d must be a contiguous float32 [N, K/32] CPU tensor");
  check_bias(bias, n);
  Tensor out = at::empty({m, n}, x.options());
  const int rc = tf_skinny_linear_q8_0(
      bf16_ptr(x), m, x.stride(0), static_cast<const int8_t *>(codes.data_ptr()),
      static_cast<const float *>(d.data_ptr()), n, k, bias ? bf16_ptr(*bias) : nullptr,
      bf16_mut(out), n, at::get_num_threads());
  TORCH_CHECK(rc == 0, "skinny_linear_q8_0: unsupported arguments");
  return out;
}

int64_t amx_init() { return tf_amx_init(); }

void check_paged(const Tensor &q, const Tensor &k_cache, const Tensor &v_cache,
                 const Tensor &block_tables, const Tensor &context_lens) {
  const auto fp = [](const Tensor &t) {
    return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat;
  };
  TORCH_CHECK(fp(q) && fp(k_cache) && v_cache.scalar_type() == k_cache.scalar_type(),
              "q and the caches must be bf16 or float32 (both caches alike)");
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu() &&
                  block_tables.device().is_cpu() && context_lens.device().is_cpu(),
              "paged_decode_attention runs on CPU tensors");
  TORCH_CHECK_VALUE(q.dim() == 3 && k_cache.dim() == 4 && block_tables.dim() == 2 &&
                        context_lens.dim() == 1,
                    "expected q [D, H, Dh], caches [N, B, KVH, Dh], tables [D, M], lens [D]");
  const int64_t d = q.size(0), heads = q.size(1), head_dim = q.size(2);
  const int64_t kv_heads = k_cache.size(2);
  TORCH_CHECK_VALUE(k_cache.size(3) == head_dim && v_cache.sizes() == k_cache.sizes() &&
                        kv_heads > 0 && heads % kv_heads == 0 && block_tables.size(0) == d &&
                        context_lens.size(0) == d,
                    "shape mismatch: q ", q.sizes(), ", k_cache ", k_cache.sizes(),
                    ", v_cache ", v_cache.sizes(), ", block_tables ", block_tables.sizes(),
                    ", context_lens ", context_lens.sizes());
  TORCH_CHECK(head_dim % 16 == 0 && head_dim <= 256 && heads / kv_heads <= 16,
              "head_dim must be a multiple of 16 up to 256, with at most 16 query heads per "
              "kv head");
  TORCH_CHECK((d == 0 || q.stride(2) == 1) && k_cache.is_contiguous() &&
                  v_cache.is_contiguous(),
              "q needs a contiguous head_dim, the caches must be contiguous");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && block_tables.stride(1) == 1 &&
                  context_lens.scalar_type() == at::kLong && context_lens.is_contiguous(),
              "block_tables and context_lens must be int64 with contiguous rows");
}

void paged_decode_attention_out(const Tensor &q, const Tensor &k_cache, const Tensor &v_cache,
                                const Tensor &block_tables, const Tensor &context_lens,
                                double scale, Tensor out) {
  check_paged(q, k_cache, v_cache, block_tables, context_lens);
  TORCH_CHECK_VALUE(out.scalar_type() == q.scalar_type() && out.device().is_cpu() &&
                        out.sizes() == q.sizes() && (q.size(0) == 0 || out.stride(2) == 1),
                    "out must be a CPU [D, heads, head_dim] tensor in q's dtype");
  if (q.size(0) == 0) return;
  const auto addr = [](const Tensor &t) {
    return static_cast<int64_t>(reinterpret_cast<intptr_t>(t.data_ptr()));
  };
  const tf_paged_args a = {
      addr(q), q.stride(0), q.stride(1),
      addr(k_cache), addr(v_cache), k_cache.size(0), k_cache.size(1), k_cache.size(2),
      k_cache.size(3),
      addr(block_tables), block_tables.stride(0), block_tables.size(1), addr(context_lens),
      q.size(0), q.size(1),
      addr(out), out.stride(0), out.stride(1),
      scale,
      q.scalar_type() == at::kBFloat16, k_cache.scalar_type() == at::kBFloat16,
      out.scalar_type() == at::kBFloat16, at::get_num_threads(),
  };
  const int rc = tf_paged_decode_attention(&a);
  TORCH_CHECK_VALUE(rc != -2,
                    "context length or block id out of range of the block table / cache");
  TORCH_CHECK(rc == 0, "paged_decode_attention: unsupported arguments");
}

Tensor paged_decode_attention(const Tensor &q, const Tensor &k_cache, const Tensor &v_cache,
                              const Tensor &block_tables, const Tensor &context_lens,
                              double scale) {
  Tensor out = at::empty(q.sizes(), q.options());
  paged_decode_attention_out(q, k_cache, v_cache, block_tables, context_lens, scale, out);
  return out;
}

Tensor add_rms_norm(const Tensor &x, Tensor residual, const Tensor &weight, double eps,
                    bool add) {
  check_bf16_cpu(x, "x");
  check_bf16_cpu(residual, "residual");
  check_bf16_cpu(weight, "weight");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [M, N] with contiguous rows");
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.stride(1) == 1,
              "residual must be x's shape with contiguous rows");
  const int64_t m = x.size(0), n = x.size(1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == n && weight.is_contiguous(),
              "weight must be a contiguous [N] tensor");
  Tensor out = at::empty({m, n}, x.options());
  tf_add_rms_norm_bf16(bf16_ptr(x), x.stride(0), bf16_mut(residual), residual.stride(0),
                       bf16_ptr(weight), bf16_mut(out), n, m, n, static_cast<float>(eps), add);
  return out;
}


// Checks that t is a contiguous CPU tensor of this dtype and shape.
void check_exact(const Tensor &t, at::ScalarType dtype, at::IntArrayRef sizes, const char *name) {
  TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu() && t.is_contiguous() &&
                  t.sizes() == sizes,
              name, " must be a contiguous ", dtype, " CPU tensor of shape ", sizes, ", got ",
              t.scalar_type(), " ", t.sizes());
}

void q4_into(const Tensor &x, const Tensor &codes, const Tensor &dm, Tensor &out, int nt) {
  const int rc = tf_skinny_linear_q4_1(
      bf16_ptr(x), x.size(0), x.stride(0), static_cast<const uint8_t *>(codes.data_ptr()),
      static_cast<const float *>(dm.data_ptr()), codes.size(0), x.size(1), nullptr,
      bf16_mut(out), out.stride(0), nt);
  TORCH_CHECK(rc == 0, "decode_layers: the Q4_1 kernel did not take a linear");
}

// A decode step's decoder layers in one call: per layer add+RMSNorm, the fused q/k/v
// projection (Q4_1), RoPE with K/V written to the cache, paged attention, the output
// projection, add+RMSNorm, gate/up (Q4_1), SiLU * up, down (Q4_1). The same kernels and the
// same roundings as the model's forward on the CPU backends, so the result is bit for bit
// that forward's; what goes is the Python and dispatch between ~60 small ops per layer.
// norms: each layer's input and post-attention norm weights; codes/scales: each layer's
// q/k/v, o, gate/up and down Q4_1 weights. Returns (the last layer's output, the residual).
std::tuple<Tensor, Tensor> decode_layers(
    const Tensor &x_in, const Tensor &cos, const Tensor &sin, const Tensor &slots,
    const Tensor &block_tables, const Tensor &context_lens, at::TensorList k_caches,
    at::TensorList v_caches, at::TensorList norms, at::TensorList codes, at::TensorList scales,
    int64_t heads, double eps, double attn_scale) {
  const auto [m, hidden] = check_x(x_in);
  const int64_t layers = static_cast<int64_t>(k_caches.size());
  TORCH_CHECK(layers > 0 && static_cast<int64_t>(v_caches.size()) == layers &&
                  static_cast<int64_t>(norms.size()) == 2 * layers &&
                  static_cast<int64_t>(codes.size()) == 4 * layers &&
                  static_cast<int64_t>(scales.size()) == 4 * layers,
              "decode_layers: per layer one K and one V cache, two norms and four linears");
  TORCH_CHECK(m >= 1 && m <= 1024 && hidden % 32 == 0, "decode_layers: 1 to 1024 rows, and a "
              "hidden size that is a multiple of 32");
  const int64_t kv_heads = k_caches[0].size(2), d = k_caches[0].size(3);
  const int64_t q_size = heads * d, kv_size = kv_heads * d, qkv_size = q_size + 2 * kv_size;
  const int64_t inter2 = codes[2].size(0), inter = inter2 / 2;
  check_exact(cos, at::kBFloat16, {m, d}, "cos");
  check_exact(sin, at::kBFloat16, {m, d}, "sin");
  check_exact(slots, at::kLong, {m}, "slots");
  for (int64_t l = 0; l < layers; l++) {
    const Tensor &kc = k_caches[l];
    check_exact(kc, at::kBFloat16, kc.sizes(), "k_cache");
    check_exact(v_caches[l], at::kBFloat16, kc.sizes(), "v_cache");
    TORCH_CHECK(kc.dim() == 4 && kc.sizes() == k_caches[0].sizes(), "decode_layers: every "
                "layer's cache must have the first one's shape");
    check_exact(norms[2 * l], at::kBFloat16, {hidden}, "input norm");
    check_exact(norms[2 * l + 1], at::kBFloat16, {hidden}, "post-attention norm");
    const int64_t shapes[4][2] = {{qkv_size, hidden}, {hidden, q_size}, {inter2, hidden},
                                  {hidden, inter}};
    for (int i = 0; i < 4; i++) {
      const int64_t n = shapes[i][0], k = shapes[i][1];
      TORCH_CHECK(k % 32 == 0, "decode_layers: a linear's input size must be a multiple of 32");
      check_exact(codes[4 * l + i], at::kByte, {n, k / 2}, "Q4_1 codes");
      check_exact(scales[4 * l + i], at::kFloat, {n, 2, k / 32}, "Q4_1 scales");
    }
  }
  const auto opts = x_in.options();
  Tensor x = x_in.clone(at::MemoryFormat::Contiguous);
  Tensor residual = at::empty({m, hidden}, opts), h = at::empty({m, hidden}, opts);
  Tensor qkv = at::empty({m, qkv_size}, opts), q = at::empty({m, heads, d}, opts);
  Tensor attn = at::empty({m, heads, d}, opts), o = at::empty({m, hidden}, opts);
  Tensor gate_up = at::empty({m, inter2}, opts);
  const int nt = at::get_num_threads();
  const float feps = static_cast<float>(eps);
  for (int64_t l = 0; l < layers; l++) {
    const Tensor &kc = k_caches[l], &vc = v_caches[l];
    tf_add_rms_norm_bf16(bf16_ptr(x), hidden, bf16_mut(residual), hidden,
                         bf16_ptr(norms[2 * l]), bf16_mut(h), hidden, m, hidden, feps, l > 0);
    q4_into(h, codes[4 * l], scales[4 * l], qkv, nt);
    const int rc = tf_rope_kv_write_bf16(
        bf16_ptr(qkv), qkv_size, bf16_ptr(cos), bf16_ptr(sin), m, heads, kv_heads, d,
        bf16_mut(q), static_cast<bf16_t *>(kc.data_ptr()), static_cast<bf16_t *>(vc.data_ptr()),
        static_cast<const int64_t *>(slots.data_ptr()), kc.size(0) * kc.size(1));
    TORCH_CHECK_VALUE(rc != -2, "decode_layers: a cache slot is out of range");
    TORCH_CHECK(rc == 0, "decode_layers: RoPE needs a head size that is a multiple of 16");
    paged_decode_attention_out(q, kc, vc, block_tables, context_lens, attn_scale, attn);
    q4_into(attn.view({m, q_size}), codes[4 * l + 1], scales[4 * l + 1], o, nt);
    tf_add_rms_norm_bf16(bf16_ptr(o), hidden, bf16_mut(residual), hidden,
                         bf16_ptr(norms[2 * l + 1]), bf16_mut(h), hidden, m, hidden, feps, 1);
    q4_into(h, codes[4 * l + 2], scales[4 * l + 2], gate_up, nt);
    // PyTorch's own SiLU (its vectorised exp) and product, so each value rounds as the
    // model's silu_mul rounds it.
    Tensor act = at::silu(gate_up.narrow(1, 0, inter));
    act.mul_(gate_up.narrow(1, inter, inter));
    q4_into(act, codes[4 * l + 3], scales[4 * l + 3], x, nt);
  }
  return {x, residual};
}

}  // namespace

TORCH_LIBRARY(tokenfactory, m) {
  m.def("skinny_linear(Tensor x, Tensor w, Tensor? bias=None, bool use_amx=False) -> Tensor");
  m.def("skinny_linear_out(Tensor x, Tensor w, Tensor? bias, bool use_amx, Tensor(a!) out) "
        "-> ()");
  m.def("skinny_linear_q4_1(Tensor x, Tensor codes, Tensor dm, Tensor? bias=None) -> Tensor");
  m.def("skinny_linear_q8_0(Tensor x, Tensor codes, Tensor d, Tensor? bias=None) -> Tensor");
  m.def("amx_init() -> int", &amx_init);
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor context_lens, float scale) -> Tensor");
  m.def("paged_decode_attention_out(Tensor q, Tensor k_cache, Tensor v_cache, "
        "Tensor block_tables, Tensor context_lens, float scale, Tensor(a!) out) -> ()");
  m.def("add_rms_norm(Tensor x, Tensor(a!) residual, Tensor weight, float eps, bool add) "
        "-> Tensor");
  m.def("decode_layers(Tensor x, Tensor cos, Tensor sin, Tensor slots, Tensor block_tables, "
        "Tensor context_lens, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, Tensor[] norms, "
        "Tensor[] codes, Tensor[] scales, int heads, float eps, float attn_scale) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tokenfactory, CPU, m) {
  m.impl("skinny_linear", &skinny_linear);
  m.impl("skinny_linear_out", &skinny_linear_out);
  m.impl("skinny_linear_q4_1", &skinny_linear_q4_1);
  m.impl("skinny_linear_q8_0", &skinny_linear_q8_0);
  m.impl("paged_decode_attention", &paged_decode_attention);
  m.impl("paged_decode_attention_out", &paged_decode_attention_out);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("decode_layers", &decode_layers);
}
