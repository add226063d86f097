// Fused normalization kernels for XLA:CPU, called through the XLA FFI.
//
// One geometry serves layer, RMS, batch, group and instance norm: x is viewed as
// (B, S, G, K) in row-major order and the statistics are taken per (b, g) over the
// (s, k) elements of the group. Parameters (scale, bias) are indexed by (g, k) or by g
// alone, with one row per instance when several problems are folded into B (vmap).
//
//   layer / RMS norm over the last axis N of (R, N):  (R, 1, 1, N)
//   batch norm, features last (N..., C):              (1, N..., C, 1)
//   batch norm, NCHW:                                 (1, N, C, HW)
//   group norm, NHWC with G groups:                   (N, HW, G, C / G)
//
// Statistics use a per-group shift k (the mean of the group's first valid elements),
// c = x - k, and one pass of sum(c), sum(c^2); the normalized output is
// ((x - k) - delta) * rstd * scale + bias with delta = mean - k, as jaxnorm's pure-JAX
// path does. Inputs may be float32, bfloat16 or float16; all arithmetic is float32 with
// float64 partial sums. Reductions are split into chunks fixed by the shape alone (not
// by the thread count) and the partial sums are added in a fixed order, so every result
// is deterministic. Hot loops are compiled for several instruction sets
// (target_clones), chosen at load time; floating-point contraction is off so that every
// clone computes the same bits.
//
// No Python C API: the library is loaded with ctypes and the handlers are registered
// with jax.ffi.register_ffi_target.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(JAXNORM_NO_CLONES)
#define JAXNORM_HOT \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define JAXNORM_HOT __attribute__((flatten))
#endif
#define JAXNORM_INLINE inline __attribute__((always_inline))

namespace jaxnorm {
namespace {

// ----------------------------------------------------------------------------------
// Element types: loads convert to float32, stores round to nearest even.

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

JAXNORM_INLINE float load(float v) { return v; }

JAXNORM_INLINE float load(bf16 v) {
  const uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

JAXNORM_INLINE void store(float* p, float v) { *p = v; }

JAXNORM_INLINE void store(bf16* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;  // quiet NaN, sign kept
  p->bits = uint16_t((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
}

#if defined(__FLT16_MANT_DIG__)
JAXNORM_INLINE float load(f16 v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, 2);
  return float(h);
}
JAXNORM_INLINE void store(f16* p, float v) {
  const _Float16 h = _Float16(v);
  std::memcpy(&p->bits, &h, 2);
}
#else
// IEEE binary16 <-> binary32 without compiler support for _Float16.
JAXNORM_INLINE float load(f16 v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  uint32_t exponent = (v.bits >> 10) & 0x1Fu, mantissa = v.bits & 0x3FFu, u;
  if (exponent == 0x1F) {
    u = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    u = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    u = sign;
  } else {  // subnormal: normalize
    int shift = 0;
    while (!(mantissa & 0x400u)) { mantissa <<= 1; ++shift; }
    u = sign | (uint32_t(113 - shift) << 23) | ((mantissa & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
JAXNORM_INLINE void store(f16* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  uint16_t h;
  if (abs > 0x7F800000u) {
    h = sign | 0x7E00u;
  } else if (abs >= 0x477FF000u) {  // rounds to >= 65520: infinity
    h = sign | 0x7C00u;
  } else if (abs >= 0x38800000u) {  // normal half
    const uint32_t rounded = abs + 0xFFFu + ((abs >> 13) & 1u);
    h = sign | uint16_t((rounded - 0x38000000u) >> 13);
  } else {  // subnormal half or zero: scale into the integer range and round
    float scaled;
    std::memcpy(&scaled, &abs, 4);
    h = sign | uint16_t(std::nearbyint(scaled * 16777216.0f));
  }
  p->bits = h;
}
#endif

// ----------------------------------------------------------------------------------
// Eight-float vectors (GCC/Clang vector extensions): two of them hold the 16 lanes of a
// reduction. Lane j sums the elements k = j (mod 16) of a block, so the result does not
// depend on how wide the machine's vectors are.

typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint8_t v8b __attribute__((vector_size(8)));

JAXNORM_INLINE v8f splat(float v) { return v8f{} + v; }

JAXNORM_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

JAXNORM_INLINE v8f load8(const bf16* p) {
  v8h h;
  std::memcpy(&h, p, sizeof(h));
  const v8u w = __builtin_convertvector(h, v8u) << 16;
  v8f v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

JAXNORM_INLINE v8f load8(const f16* p) {
#if defined(__FLT16_MANT_DIG__)
  typedef _Float16 v8f16 __attribute__((vector_size(16)));
  v8f16 h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, v8f);
#else
  v8f v;
  for (int j = 0; j < 8; ++j) v[j] = load(p[j]);
  return v;
#endif
}

JAXNORM_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

JAXNORM_INLINE void store8(bf16* p, v8f v) {
  v8u u;
  std::memcpy(&u, &v, sizeof(u));
  const v8u rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const v8u nan = (u >> 16) | 0x40u;
  const v8u bits = (u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded;
  const v8h h = __builtin_convertvector(bits, v8h);
  std::memcpy(p, &h, sizeof(h));
}

JAXNORM_INLINE void store8(f16* p, v8f v) {
#if defined(__FLT16_MANT_DIG__)
  typedef _Float16 v8f16 __attribute__((vector_size(16)));
  const v8f16 h = __builtin_convertvector(v, v8f16);
  std::memcpy(p, &h, sizeof(h));
#else
  for (int j = 0; j < 8; ++j) store(p + j, v[j]);
#endif
}

// The mask entries as 1.0 (valid) or 0.0.
JAXNORM_INLINE v8f load8_mask(const uint8_t* m) {
  v8b b;
  std::memcpy(&b, m, sizeof(b));
  return __builtin_convertvector(b != 0, v8f) * -1.0f;  // true is -1 in vector compares
}

JAXNORM_INLINE float fold(v8f a, v8f b) {
  float t = 0.0f;
  for (int j = 0; j < 8; ++j) t += a[j];
  for (int j = 0; j < 8; ++j) t += b[j];
  return t;
}

// ----------------------------------------------------------------------------------
// Geometry and work split.

constexpr int64_t kItemElements = 1 << 15;
constexpr int64_t kMaxChunks = 32;
constexpr int64_t kSegment = 16;   // see Geometry::by_segments
constexpr int kLanes = 16;
constexpr int64_t kBlock = 4096;   // float partial sums over at most this many values
constexpr int64_t kRowBlock = 64;  // channel path: rows per float block
constexpr int kShiftSamples = 16;

struct Geometry {
  int64_t B, S, G, K;              // x is (B, S, G, K); statistics per (b, g)
  int64_t instances;               // problems folded into B (vmap); B % instances == 0
  int64_t Ks;                      // parameters are (rows, G, Ks) with Ks in {1, K}
  int64_t scale_rows, bias_rows;   // 1, or `instances` (one row per problem)
  int64_t Gm, Km;                  // mask is (B, S, Gm, Km): Gm in {1, G}, Km in {1, K}
  bool masked;
  bool center;

  int64_t row() const { return G * K; }
  // Reduce along k within each (row, group) segment; else across channels over blocks of
  // rows (few elements per segment, many rows: batch norm, NHWC group norm).
  bool by_segments() const { return K >= kSegment || S < kRowBlock; }
  int64_t per_b() const { return S * G * K; }
  int64_t per_instance() const { return B / instances; }
  int64_t instance(int64_t b) const { return b / per_instance(); }
  int64_t scale_row(int64_t b) const { return scale_rows == 1 ? 0 : instance(b); }
  int64_t bias_row(int64_t b) const { return bias_rows == 1 ? 0 : instance(b); }
};

// Work items are fixed by the shape alone. "By rows": an item is a range of whole
// b's (all of S) within one instance, so each group's statistics are computed in one
// item, in cache. Otherwise an item is one b and a chunk of S, with per-item partial
// sums added in item order.
struct Plan {
  bool by_rows;
  int64_t rows_per_item, items_per_instance;  // by rows
  int64_t chunk_len, chunks;                  // by chunks of S
  int64_t items;
};

Plan make_plan(const Geometry& geo) {
  Plan plan{};
  const int64_t per_b = std::max<int64_t>(geo.per_b(), 1);
  if (per_b <= 2 * kItemElements || geo.S == 1) {
    plan.by_rows = true;
    plan.rows_per_item = std::min(std::max<int64_t>(1, kItemElements / per_b),
                                  std::max<int64_t>(1, geo.per_instance()));
    plan.items_per_instance =
        (geo.per_instance() + plan.rows_per_item - 1) / plan.rows_per_item;
    plan.items = geo.instances * plan.items_per_instance;
  } else {
    plan.by_rows = false;
    int64_t chunks = std::min<int64_t>({geo.S, kMaxChunks, per_b / kItemElements});
    chunks = std::max<int64_t>(chunks, 1);
    plan.chunk_len = (geo.S + chunks - 1) / chunks;
    plan.chunks = (geo.S + plan.chunk_len - 1) / plan.chunk_len;
    plan.items = geo.B * plan.chunks;
  }
  return plan;
}

struct Item { int64_t b0, b1, s0, s1; };

Item item_at(const Geometry& geo, const Plan& plan, int64_t i) {
  if (plan.by_rows) {
    const int64_t inst = i / plan.items_per_instance, j = i % plan.items_per_instance;
    const int64_t b0 = inst * geo.per_instance() + j * plan.rows_per_item;
    const int64_t b1 = std::min(b0 + plan.rows_per_item, (inst + 1) * geo.per_instance());
    return {b0, b1, 0, geo.S};
  }
  const int64_t b = i / plan.chunks, c = i % plan.chunks;
  const int64_t s0 = c * plan.chunk_len;
  return {b, b + 1, s0, std::min(geo.S, s0 + plan.chunk_len)};
}

// ----------------------------------------------------------------------------------
// Parallel loop over the FFI's thread pool. The calling thread takes items too, so the
// loop finishes even if no pool thread ever starts; late pool tasks find no work left.

void parallel_for(ffi::ThreadPool* pool, int64_t n, const std::function<void(int64_t)>& body) {
  if (n <= 0) return;
  const int64_t threads = pool ? std::min<int64_t>(pool->num_threads(), n) : 1;
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t n = 0;
    std::function<void(int64_t)> body;
  };
  auto state = std::make_shared<State>();
  state->n = n;
  state->body = body;
  auto work = [state]() {
    for (;;) {
      const int64_t i = state->next.fetch_add(1, std::memory_order_relaxed);
      if (i >= state->n) return;
      state->body(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool->Schedule([state, work]() { work(); });
  work();
  while (state->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

// ----------------------------------------------------------------------------------
// Mask access.

struct MaskView {
  const uint8_t* data;  // (B, S, Gm, Km) or null
  int64_t S, Gm, Km;
  // The mask entries of row (b, s); entry (g, k) is at g * Gm' + k * Km' (see below).
  const uint8_t* row(int64_t b, int64_t s) const { return data + (b * S + s) * Gm * Km; }
  int64_t g_stride() const { return Gm == 1 ? 0 : Km; }
  bool per_element() const { return Km != 1; }
};

// ----------------------------------------------------------------------------------
// Statistics.

// Adds sum(c), sum(c^2) and the count of valid elements, c = x - shift, over n
// contiguous elements (m: per-element mask or null).
template <bool Masked, class T>
JAXNORM_INLINE void segment_moments(const T* x, const uint8_t* m, int64_t n, float shift,
                                    double& s1, double& s2, double& count) {
  const v8f sh = splat(shift), zero = {};
  for (int64_t base = 0; base < n; base += kBlock) {
    const int64_t end = std::min(n, base + kBlock);
    v8f a1 = {}, b1 = {}, a2 = {}, b2 = {}, an = {}, bn = {};
    int64_t k = base;
    for (; k + kLanes <= end; k += kLanes) {
      v8f c0 = load8(x + k) - sh, c1 = load8(x + k + 8) - sh;
      if (Masked) {
        const v8f w0 = load8_mask(m + k), w1 = load8_mask(m + k + 8);
        c0 = w0 > zero ? c0 : zero;
        c1 = w1 > zero ? c1 : zero;
        an += w0;
        bn += w1;
      }
      a1 += c0;
      b1 += c1;
      a2 += c0 * c0;
      b2 += c1 * c1;
    }
    float t1 = fold(a1, b1), t2 = fold(a2, b2), tn = fold(an, bn);
    for (; k < end; ++k) {
      float c = load(x[k]) - shift;
      const bool valid = !Masked || m[k] != 0;
      c = valid ? c : 0.0f;
      t1 += c;
      t2 += c * c;
      tn += valid ? 1.0f : 0.0f;
    }
    s1 += t1;
    s2 += t2;
    count += Masked ? double(tn) : double(end - base);
  }
}

template <class T>
struct Kernel {
  Geometry geo;
  Plan plan;
  const T* x = nullptr;
  const T* dy = nullptr;
  MaskView mask{};

  bool valid(int64_t b, int64_t s, int64_t g, int64_t k) const {
    if (!geo.masked) return true;
    return mask.row(b, s)[g * mask.g_stride() + (mask.per_element() ? k : 0)] != 0;
  }
  const T* row(const T* base, int64_t b, int64_t s) const {
    return base + (b * geo.S + s) * geo.row();
  }

  // The shift of each group of b: the mean of its first kShiftSamples valid elements in
  // (s, k) order; 0 for a group with none (its mean is then 0, as in the JAX path).
  void shifts(int64_t b, float* out) const {
    const int64_t G = geo.G, K = geo.K;
    if (!geo.center) {
      std::fill(out, out + G, 0.0f);
      return;
    }
    std::vector<double> sum(G, 0.0);
    std::vector<int> count(G, 0);
    int64_t open = G;
    for (int64_t s = 0; s < geo.S && open > 0; ++s) {
      const T* r = row(x, b, s);
      for (int64_t g = 0; g < G; ++g) {
        if (count[g] >= kShiftSamples) continue;
        for (int64_t k = 0; k < K && count[g] < kShiftSamples; ++k) {
          if (!valid(b, s, g, k)) continue;
          sum[g] += load(r[g * K + k]);
          if (++count[g] == kShiftSamples) --open;
        }
      }
    }
    for (int64_t g = 0; g < G; ++g) out[g] = count[g] ? float(sum[g] / count[g]) : 0.0f;
  }
};

template <bool Masked, class T>
JAXNORM_INLINE void channel_moments(const T* r, const uint8_t* m, int64_t n, const float* shift,
                                    float* a1, float* a2, float* an) {
  for (int64_t c = 0; c < n; ++c) {
    float v = load(r[c]) - shift[c];
    if (Masked) {
      v = m[c] ? v : 0.0f;
      an[c] += m[c] ? 1.0f : 0.0f;
    }
    a1[c] += v;
    a2[c] += v * v;
  }
}

// The mask entries of row (b, s) as one byte per channel (g, k).
JAXNORM_INLINE void row_mask(const MaskView& mask, int64_t b, int64_t s, int64_t K,
                             int64_t row_len, uint8_t* out) {
  const uint8_t* mr = mask.row(b, s);
  for (int64_t c = 0; c < row_len; ++c)
    out[c] = mr[(c / K) * mask.g_stride() + (mask.per_element() ? c % K : 0)];
}

// Adds the moments of rows s0..s1 of b to m1[g], m2[g], mn[g] (float64, per group).
template <class T>
JAXNORM_INLINE void accumulate_moments_impl(const Kernel<T>& kern, int64_t b, int64_t s_begin,
                                            int64_t s_end, const float* shift, double* m1,
                                            double* m2, double* mn) {
  const Geometry& geo = kern.geo;
  const MaskView& mask = kern.mask;
  const int64_t G = geo.G, K = geo.K, row_len = geo.row();
  if (geo.by_segments()) {
    for (int64_t s = s_begin; s < s_end; ++s) {
      const T* r = kern.row(kern.x, b, s);
      const uint8_t* mr = geo.masked ? mask.row(b, s) : nullptr;
      for (int64_t g = 0; g < G; ++g) {
        if (!geo.masked) {
          segment_moments<false>(r + g * K, nullptr, K, shift[g], m1[g], m2[g], mn[g]);
        } else if (mask.per_element()) {
          segment_moments<true>(r + g * K, mr + g * mask.g_stride(), K, shift[g], m1[g],
                                m2[g], mn[g]);
        } else if (mr[g * mask.g_stride()]) {
          segment_moments<false>(r + g * K, nullptr, K, shift[g], m1[g], m2[g], mn[g]);
        }
      }
    }
    return;
  }
  // Few elements per group and row: accumulate per channel across rows (vectorized
  // over the contiguous G * K channels), then fold the channels of each group.
  std::vector<float> shift_c(row_len), a1(row_len), a2(row_len), an(row_len);
  std::vector<uint8_t> mask_c(geo.masked ? row_len : 0);
  for (int64_t c = 0; c < row_len; ++c) shift_c[c] = shift[c / K];
  for (int64_t block = s_begin; block < s_end; block += kRowBlock) {
    const int64_t block_end = std::min(s_end, block + kRowBlock);
    std::fill(a1.begin(), a1.end(), 0.0f);
    std::fill(a2.begin(), a2.end(), 0.0f);
    std::fill(an.begin(), an.end(), 0.0f);
    for (int64_t s = block; s < block_end; ++s) {
      const T* r = kern.row(kern.x, b, s);
      if (geo.masked) {
        row_mask(mask, b, s, K, row_len, mask_c.data());
        channel_moments<true>(r, mask_c.data(), row_len, shift_c.data(), a1.data(),
                              a2.data(), an.data());
      } else {
        channel_moments<false>(r, nullptr, row_len, shift_c.data(), a1.data(), a2.data(),
                               an.data());
      }
    }
    const double rows = double(block_end - block);
    for (int64_t c = 0; c < row_len; ++c) {
      m1[c / K] += a1[c];
      m2[c / K] += a2[c];
      mn[c / K] += geo.masked ? double(an[c]) : rows;
    }
  }
}

// Per-group results from float64 sums: delta = mean - shift, biased variance, count.
JAXNORM_INLINE void finish_moments(bool center, double s1, double s2, double n, float* delta,
                                   float* var, float* count) {
  const double safe_n = std::max(n, 1.0);
  if (!center) {
    *delta = 0.0f;
    *var = float(s2 / safe_n);
  } else {
    const double d = s1 / safe_n;
    *delta = float(d);
    *var = float(std::max(s2 - s1 * d, 0.0) / safe_n);
  }
  *count = float(n);
}

struct Params { const float *scale, *bias; };  // (rows, G, Ks), float32

// y = ((x - shift) - delta) * (rstd * scale) + bias for rows s0..s1 of b.
template <class T>
JAXNORM_INLINE void apply_rows_impl(const Kernel<T>& kern, int64_t b, int64_t s_begin, int64_t s_end,
                const float* shift, const float* delta, const float* rstd, Params params,
                T* y, std::vector<float>& work) {
  const Geometry& geo = kern.geo;
  const int64_t G = geo.G, K = geo.K, Ks = geo.Ks, row_len = geo.row();
  const float* scale = params.scale + geo.scale_row(b) * G * Ks;
  const float* bias = params.bias + geo.bias_row(b) * G * Ks;
  if (geo.by_segments()) {
    for (int64_t s = s_begin; s < s_end; ++s) {
      const T* r = kern.row(kern.x, b, s);
      T* out = y + (b * geo.S + s) * row_len;
      for (int64_t g = 0; g < G; ++g) {
        const float sh = shift[g], de = delta[g], rs = rstd[g];
        const T* xg = r + g * K;
        T* yg = out + g * K;
        const v8f shv = splat(sh), dev = splat(de), rsv = splat(rs);
        int64_t k = 0;
        if (Ks == K) {
          const float* sc = scale + g * K;
          const float* bi = bias + g * K;
          for (; k + 8 <= K; k += 8)
            store8(yg + k, ((load8(xg + k) - shv) - dev) * (rsv * load8(sc + k)) + load8(bi + k));
          for (; k < K; ++k) store(yg + k, ((load(xg[k]) - sh) - de) * (rs * sc[k]) + bi[k]);
        } else {
          const float mul = rs * scale[g], add = bias[g];
          const v8f mulv = splat(mul), addv = splat(add);
          for (; k + 8 <= K; k += 8) store8(yg + k, ((load8(xg + k) - shv) - dev) * mulv + addv);
          for (; k < K; ++k) store(yg + k, ((load(xg[k]) - sh) - de) * mul + add);
        }
      }
    }
    return;
  }
  work.resize(4 * row_len);
  float *sh = work.data(), *de = sh + row_len, *mul = de + row_len, *add = mul + row_len;
  for (int64_t c = 0; c < row_len; ++c) {
    const int64_t g = c / K, p = g * Ks + (Ks == 1 ? 0 : c % K);
    sh[c] = shift[g];
    de[c] = delta[g];
    mul[c] = rstd[g] * scale[p];
    add[c] = bias[p];
  }
  for (int64_t s = s_begin; s < s_end; ++s) {
    const T* r = kern.row(kern.x, b, s);
    T* out = y + (b * geo.S + s) * row_len;
    for (int64_t c = 0; c < row_len; ++c) store(out + c, ((load(r[c]) - sh[c]) - de[c]) * mul[c] + add[c]);
  }
}

// ----------------------------------------------------------------------------------
// Backward.
//
// With g = dy * scale, c = x - shift, xhat = (c - delta) * rstd and n valid elements:
//   sum_g = sum g, sum_gx = sum g * xhat = rstd * (sum g c - delta sum_g)  (all positions)
//   dx = rstd * g + [valid] (beta + gamma * c),
//   gamma = -rstd^2 sum_gx / n, beta = -rstd (center ? sum_g : 0) / n - gamma * delta
//   dscale = sum dy * xhat, dbias = sum dy over (b, s) of each instance (and k if Ks = 1).

struct BackwardStats { const float *shift, *delta, *rstd, *count; };

// Float partial sums per parameter entry (G * Ks), flushed into the item's float64
// sums every kRowBlock rows.
struct ParamSums {
  std::vector<float> ds, db;
  double *ds_total, *db_total;
  int64_t rows = 0;
  ParamSums(int64_t n, double* ds64, double* db64)
      : ds(n, 0.0f), db(n, 0.0f), ds_total(ds64), db_total(db64) {}
  void row_done() {
    if (++rows == kRowBlock) flush();
  }
  void flush() {
    for (size_t p = 0; p < ds.size(); ++p) {
      ds_total[p] += ds[p];
      db_total[p] += db[p];
    }
    std::fill(ds.begin(), ds.end(), 0.0f);
    std::fill(db.begin(), db.end(), 0.0f);
    rows = 0;
  }
};

// Adds, over rows s0..s1 of b: sum g and sum g c per group into gs[g], gc[g]; sum dy xhat
// and sum dy per parameter entry into `param`.
template <class T>
JAXNORM_INLINE void accumulate_backward_impl(const Kernel<T>& kern, int64_t b, int64_t s_begin,
                                             int64_t s_end, const float* shift,
                                             const float* delta, const float* rstd,
                                             const float* scale, double* gs, double* gc,
                                             ParamSums& param) {
  const Geometry& geo = kern.geo;
  const int64_t G = geo.G, K = geo.K, Ks = geo.Ks, row_len = geo.row();
  if (geo.by_segments()) {
    for (int64_t s = s_begin; s < s_end; ++s) {
      const T* xr = kern.row(kern.x, b, s);
      const T* dr = kern.row(kern.dy, b, s);
      for (int64_t g = 0; g < G; ++g) {
        const float sh = shift[g], de = delta[g], rs = rstd[g];
        const T* xg = xr + g * K;
        const T* dg = dr + g * K;
        for (int64_t base = 0; base < K; base += kBlock) {
          const int64_t end = std::min(K, base + kBlock);
          v8f a0 = {}, b0 = {}, a1 = {}, b1 = {}, a2 = {}, b2 = {};
          const v8f shv = splat(sh), dev = splat(de), rsv = splat(rs);
          float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f;
          int64_t k = base;
          if (Ks == K) {  // sum g, sum g c per group; dy xhat and dy per k
            const float* sc = scale + g * K;
            float* ds = param.ds.data() + g * K;
            float* db = param.db.data() + g * K;
            for (; k + kLanes <= end; k += kLanes) {
              for (int half = 0; half < 2; ++half) {
                const int64_t at = k + 8 * half;
                const v8f c = load8(xg + at) - shv, d = load8(dg + at);
                const v8f gv = d * load8(sc + at);
                (half ? b0 : a0) += gv;
                (half ? b1 : a1) += gv * c;
                const v8f s_new = load8(ds + at) + d * ((c - dev) * rsv);
                const v8f b_new = load8(db + at) + d;
                std::memcpy(ds + at, &s_new, sizeof(v8f));
                std::memcpy(db + at, &b_new, sizeof(v8f));
              }
            }
            t0 = fold(a0, b0);
            t1 = fold(a1, b1);
            for (; k < end; ++k) {
              const float c = load(xg[k]) - sh, d = load(dg[k]);
              const float gv = d * sc[k];
              t0 += gv;
              t1 += gv * c;
              ds[k] += d * ((c - de) * rs);
              db[k] += d;
            }
            gs[g] += t0;
            gc[g] += t1;
          } else {  // scale constant over the group: sum g = scale * sum dy
            for (; k + kLanes <= end; k += kLanes) {
              for (int half = 0; half < 2; ++half) {
                const int64_t at = k + 8 * half;
                const v8f c = load8(xg + at) - shv, d = load8(dg + at);
                (half ? b0 : a0) += d;
                (half ? b1 : a1) += d * c;
                (half ? b2 : a2) += d * ((c - dev) * rsv);
              }
            }
            t0 = fold(a0, b0);
            t1 = fold(a1, b1);
            t2 = fold(a2, b2);
            for (; k < end; ++k) {
              const float c = load(xg[k]) - sh, d = load(dg[k]);
              t0 += d;
              t1 += d * c;
              t2 += d * ((c - de) * rs);
            }
            gs[g] += double(scale[g]) * t0;
            gc[g] += double(scale[g]) * t1;
            param.ds_total[g] += t2;
            param.db_total[g] += t0;
          }
        }
      }
      param.row_done();
    }
    return;
  }
  // Channel path: per-channel float sums over blocks of rows.
  std::vector<float> work(8 * row_len, 0.0f);
  float *sh = work.data(), *de = sh + row_len, *rs = de + row_len, *sc = rs + row_len;
  float *ag = sc + row_len, *agc = ag + row_len, *as = agc + row_len, *ab = as + row_len;
  for (int64_t c = 0; c < row_len; ++c) {
    const int64_t g = c / K;
    sh[c] = shift[g];
    de[c] = delta[g];
    rs[c] = rstd[g];
    sc[c] = scale[g * Ks + (Ks == 1 ? 0 : c % K)];
  }
  for (int64_t block = s_begin; block < s_end; block += kRowBlock) {
    const int64_t block_end = std::min(s_end, block + kRowBlock);
    std::fill(ag, ag + 4 * row_len, 0.0f);
    for (int64_t s = block; s < block_end; ++s) {
      const T* xr = kern.row(kern.x, b, s);
      const T* dr = kern.row(kern.dy, b, s);
      int64_t c = 0;
      for (; c + 8 <= row_len; c += 8) {  // explicit vectors: the arrays share one buffer
        const v8f v = load8(xr + c) - load8(sh + c), d = load8(dr + c);
        const v8f gv = d * load8(sc + c);
        store8(ag + c, load8(ag + c) + gv);
        store8(agc + c, load8(agc + c) + gv * v);
        store8(as + c, load8(as + c) + d * ((v - load8(de + c)) * load8(rs + c)));
        store8(ab + c, load8(ab + c) + d);
      }
      for (; c < row_len; ++c) {
        const float v = load(xr[c]) - sh[c], d = load(dr[c]);
        const float gv = d * sc[c];
        ag[c] += gv;
        agc[c] += gv * v;
        as[c] += d * ((v - de[c]) * rs[c]);
        ab[c] += d;
      }
    }
    for (int64_t c = 0; c < row_len; ++c) {
      const int64_t g = c / K, p = g * Ks + (Ks == 1 ? 0 : c % K);
      gs[g] += ag[c];
      gc[g] += agc[c];
      param.ds_total[p] += as[c];
      param.db_total[p] += ab[c];
    }
  }
}

// dx for rows s0..s1 of b, given the per-group coefficients.
template <class T>
JAXNORM_INLINE void dx_rows_impl(const Kernel<T>& kern, int64_t b, int64_t s_begin, int64_t s_end,
             const float* shift, const float* rstd, const float* beta, const float* gamma,
             const float* scale, T* dx, std::vector<float>& work) {
  const Geometry& geo = kern.geo;
  const int64_t G = geo.G, K = geo.K, Ks = geo.Ks, row_len = geo.row();
  const MaskView& mask = kern.mask;
  if (geo.by_segments()) {
    for (int64_t s = s_begin; s < s_end; ++s) {
      const T* xr = kern.row(kern.x, b, s);
      const T* dr = kern.row(kern.dy, b, s);
      T* out = dx + (b * geo.S + s) * row_len;
      const uint8_t* mr = geo.masked ? mask.row(b, s) : nullptr;
      for (int64_t g = 0; g < G; ++g) {
        const float sh = shift[g], rs = rstd[g];
        float be = beta[g], ga = gamma[g];
        const T* xg = xr + g * K;
        const T* dg = dr + g * K;
        T* og = out + g * K;
        if (geo.masked && !mask.per_element() && !mr[g * mask.g_stride()]) be = ga = 0.0f;
        const bool element_mask = geo.masked && mask.per_element();
        const uint8_t* mg = element_mask ? mr + g * mask.g_stride() : nullptr;
        const float* sc = scale + g * (Ks == K ? K : 1);
        const int64_t sc_step = Ks == K ? 1 : 0;
        const v8f shv = splat(sh), rsv = splat(rs), bev = splat(be), gav = splat(ga), zero = {};
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) {
          const v8f scv = sc_step ? load8(sc + k) : splat(sc[0]);
          const v8f c = load8(xg + k) - shv;
          v8f corr = bev + gav * c;
          if (element_mask) corr = load8_mask(mg + k) > zero ? corr : zero;
          store8(og + k, rsv * (load8(dg + k) * scv) + corr);
        }
        for (; k < K; ++k) {
          const float c = load(xg[k]) - sh;
          const float corr = (!element_mask || mg[k]) ? be + ga * c : 0.0f;
          store(og + k, rs * (load(dg[k]) * sc[k * sc_step]) + corr);
        }
      }
    }
    return;
  }
  work.resize(5 * row_len);
  float *sh = work.data(), *rs = sh + row_len, *sc = rs + row_len, *be = sc + row_len,
        *ga = be + row_len;
  for (int64_t c = 0; c < row_len; ++c) {
    const int64_t g = c / K;
    sh[c] = shift[g];
    rs[c] = rstd[g];
    sc[c] = scale[g * Ks + (Ks == 1 ? 0 : c % K)];
    be[c] = beta[g];
    ga[c] = gamma[g];
  }
  std::vector<uint8_t> mask_c;
  if (geo.masked) mask_c.resize(row_len);
  for (int64_t s = s_begin; s < s_end; ++s) {
    const T* xr = kern.row(kern.x, b, s);
    const T* dr = kern.row(kern.dy, b, s);
    T* out = dx + (b * geo.S + s) * row_len;
    if (geo.masked) {
      const uint8_t* mr = mask.row(b, s);
      for (int64_t c = 0; c < row_len; ++c)
        mask_c[c] = mr[(c / K) * mask.g_stride() + (mask.per_element() ? c % K : 0)];
      for (int64_t c = 0; c < row_len; ++c) {
        const float v = load(xr[c]) - sh[c];
        const float corr = mask_c[c] ? be[c] + ga[c] * v : 0.0f;
        store(out + c, rs[c] * (load(dr[c]) * sc[c]) + corr);
      }
    } else {
      for (int64_t c = 0; c < row_len; ++c) {
        const float v = load(xr[c]) - sh[c];
        store(out + c, rs[c] * (load(dr[c]) * sc[c]) + (be[c] + ga[c] * v));
      }
    }
  }
}

// beta, gamma of one group from its sums.
JAXNORM_INLINE void dx_coefficients(bool center, float delta, float rstd, float count,
                                    float sum_g, float sum_gx, float* beta, float* gamma) {
  const double inv_n = 1.0 / std::max(double(count), 1.0), r = rstd;
  const double ga = -r * r * double(sum_gx) * inv_n;
  *gamma = float(ga);
  *beta = float(-r * (center ? double(sum_g) : 0.0) * inv_n - ga * double(delta));
}

// ----------------------------------------------------------------------------------
// The hot loops, compiled once per element type and instruction set (target_clones
// resolves the best clone when the library is loaded; flatten inlines the loops into it).

#define JAXNORM_HOT_LOOPS(T)                                                            \
  JAXNORM_HOT void accumulate_moments(const Kernel<T>& kern, int64_t b, int64_t s0,      \
                                      int64_t s1, const float* shift, double* m1,        \
                                      double* m2, double* mn) {                          \
    accumulate_moments_impl(kern, b, s0, s1, shift, m1, m2, mn);                         \
  }                                                                                      \
  JAXNORM_HOT void apply_rows(const Kernel<T>& kern, int64_t b, int64_t s0, int64_t s1,  \
                              const float* shift, const float* delta, const float* rstd, \
                              Params params, T* y, std::vector<float>& work) {           \
    apply_rows_impl(kern, b, s0, s1, shift, delta, rstd, params, y, work);               \
  }                                                                                      \
  JAXNORM_HOT void accumulate_backward(const Kernel<T>& kern, int64_t b, int64_t s0,     \
                                       int64_t s1, const float* shift, const float* delta, \
                                       const float* rstd, const float* scale, double* gs, \
                                       double* gc, ParamSums& param) {                   \
    accumulate_backward_impl(kern, b, s0, s1, shift, delta, rstd, scale, gs, gc, param); \
  }                                                                                      \
  JAXNORM_HOT void dx_rows(const Kernel<T>& kern, int64_t b, int64_t s0, int64_t s1,     \
                           const float* shift, const float* rstd, const float* beta,     \
                           const float* gamma, const float* scale, T* dx,                \
                           std::vector<float>& work) {                                   \
    dx_rows_impl(kern, b, s0, s1, shift, rstd, beta, gamma, scale, dx, work);            \
  }

JAXNORM_HOT_LOOPS(float)
JAXNORM_HOT_LOOPS(bf16)
JAXNORM_HOT_LOOPS(f16)

// ----------------------------------------------------------------------------------
// Phases, each a parallel loop over the plan's items.

struct StatsOut { float *shift, *delta, *var, *count; };

// Statistics of every group. With by-rows plans each item finishes its groups; else
// per-item partial sums are added per b in item order.
template <class T>
void run_moments(const Kernel<T>& kern, ffi::ThreadPool* pool, StatsOut out) {
  const Geometry& geo = kern.geo;
  const Plan& plan = kern.plan;
  const int64_t G = geo.G;
  if (plan.by_rows) {
    parallel_for(pool, plan.items, [&](int64_t i) {
      const Item it = item_at(geo, plan, i);
      std::vector<double> m1(G), m2(G), mn(G);
      for (int64_t b = it.b0; b < it.b1; ++b) {
        float* shift = out.shift + b * G;
        kern.shifts(b, shift);
        std::fill(m1.begin(), m1.end(), 0.0);
        std::fill(m2.begin(), m2.end(), 0.0);
        std::fill(mn.begin(), mn.end(), 0.0);
        accumulate_moments(kern, b, 0, geo.S, shift, m1.data(), m2.data(), mn.data());
        for (int64_t g = 0; g < G; ++g)
          finish_moments(geo.center, m1[g], m2[g], mn[g], out.delta + b * G + g,
                         out.var + b * G + g, out.count + b * G + g);
      }
    });
    return;
  }
  parallel_for(pool, geo.B, [&](int64_t b) { kern.shifts(b, out.shift + b * G); });
  std::vector<double> partial(plan.items * G * 3, 0.0);
  parallel_for(pool, plan.items, [&](int64_t i) {
    const Item it = item_at(geo, plan, i);
    double* p = partial.data() + i * G * 3;
    accumulate_moments(kern, it.b0, it.s0, it.s1, out.shift + it.b0 * G, p, p + G,
                       p + 2 * G);
  });
  for (int64_t b = 0; b < geo.B; ++b) {
    for (int64_t g = 0; g < G; ++g) {
      double s1 = 0, s2 = 0, n = 0;
      for (int64_t c = 0; c < plan.chunks; ++c) {
        const double* p = partial.data() + (b * plan.chunks + c) * G * 3;
        s1 += p[g];
        s2 += p[G + g];
        n += p[2 * G + g];
      }
      finish_moments(geo.center, s1, s2, n, out.delta + b * G + g, out.var + b * G + g,
                     out.count + b * G + g);
    }
  }
}

template <class T>
void run_apply(const Kernel<T>& kern, ffi::ThreadPool* pool, const float* shift,
               const float* delta, const float* rstd, Params params, T* y) {
  const Geometry& geo = kern.geo;
  parallel_for(pool, kern.plan.items, [&](int64_t i) {
    const Item it = item_at(geo, kern.plan, i);
    std::vector<float> work;
    for (int64_t b = it.b0; b < it.b1; ++b)
      apply_rows(kern, b, it.s0, it.s1, shift + b * geo.G, delta + b * geo.G,
                 rstd + b * geo.G, params, y, work);
  });
}

// Forward in one call: statistics, rstd = 1 / sqrt(var + epsilon), y. With by-rows
// plans each b's rows are normalized right after their statistics, while in cache.
template <class T>
void run_forward(const Kernel<T>& kern, ffi::ThreadPool* pool, StatsOut out, float epsilon,
                 Params params, T* y) {
  const Geometry& geo = kern.geo;
  const Plan& plan = kern.plan;
  const int64_t G = geo.G;
  std::vector<float> rstd(geo.B * G);
  if (plan.by_rows) {
    parallel_for(pool, plan.items, [&](int64_t i) {
      const Item it = item_at(geo, plan, i);
      std::vector<double> m1(G), m2(G), mn(G);
      std::vector<float> work;
      for (int64_t b = it.b0; b < it.b1; ++b) {
        float* shift = out.shift + b * G;
        kern.shifts(b, shift);
        std::fill(m1.begin(), m1.end(), 0.0);
        std::fill(m2.begin(), m2.end(), 0.0);
        std::fill(mn.begin(), mn.end(), 0.0);
        accumulate_moments(kern, b, 0, geo.S, shift, m1.data(), m2.data(), mn.data());
        for (int64_t g = 0; g < G; ++g) {
          const int64_t j = b * G + g;
          finish_moments(geo.center, m1[g], m2[g], mn[g], out.delta + j, out.var + j,
                         out.count + j);
          rstd[j] = 1.0f / std::sqrt(out.var[j] + epsilon);
        }
        apply_rows(kern, b, 0, geo.S, shift, out.delta + b * G, rstd.data() + b * G, params,
                   y, work);
      }
    });
    return;
  }
  run_moments(kern, pool, out);
  for (int64_t j = 0; j < geo.B * G; ++j) rstd[j] = 1.0f / std::sqrt(out.var[j] + epsilon);
  run_apply(kern, pool, out.shift, out.delta, rstd.data(), params, y);
}

struct SumsOut { float *sum_g, *sum_gx; float *dscale, *dbias; };  // (B, G) x2, (I, G, Ks) x2

// Backward sums (and, with dx != null and a by-rows plan, dx right after each b's sums).
// Returns the sums per group and dscale, dbias per instance.
template <class T>
void run_backward_sums(const Kernel<T>& kern, ffi::ThreadPool* pool, BackwardStats st,
                       const float* scale_all, SumsOut out, T* dx_fused) {
  const Geometry& geo = kern.geo;
  const Plan& plan = kern.plan;
  const int64_t G = geo.G, P = G * geo.Ks;
  std::vector<double> param(plan.items * P * 2, 0.0);
  std::vector<double> group(plan.by_rows ? 0 : plan.items * G * 2, 0.0);
  parallel_for(pool, plan.items, [&](int64_t i) {
    const Item it = item_at(geo, plan, i);
    ParamSums sums(P, param.data() + i * P * 2, param.data() + i * P * 2 + P);
    std::vector<float> work, beta(G), gamma(G);
    std::vector<double> local(2 * G);
    for (int64_t b = it.b0; b < it.b1; ++b) {
      const int64_t j = b * G;
      const float* scale = scale_all + geo.scale_row(b) * P;
      double* gs = plan.by_rows ? local.data() : group.data() + i * G * 2;
      double* gc = gs + G;
      if (plan.by_rows) std::fill(local.begin(), local.end(), 0.0);
      accumulate_backward(kern, b, it.s0, it.s1, st.shift + j, st.delta + j, st.rstd + j,
                          scale, gs, gc, sums);
      if (!plan.by_rows) continue;
      for (int64_t g = 0; g < G; ++g) {
        out.sum_g[j + g] = float(gs[g]);
        out.sum_gx[j + g] =
            float(double(st.rstd[j + g]) * (gc[g] - double(st.delta[j + g]) * gs[g]));
      }
      if (dx_fused) {
        for (int64_t g = 0; g < G; ++g)
          dx_coefficients(geo.center, st.delta[j + g], st.rstd[j + g], st.count[j + g],
                          out.sum_g[j + g], out.sum_gx[j + g], &beta[g], &gamma[g]);
        dx_rows(kern, b, 0, geo.S, st.shift + j, st.rstd + j, beta.data(), gamma.data(),
                scale, dx_fused, work);
      }
    }
    sums.flush();
  });
  if (!plan.by_rows) {
    for (int64_t b = 0; b < geo.B; ++b) {
      for (int64_t g = 0; g < G; ++g) {
        double gs = 0, gc = 0;
        for (int64_t c = 0; c < plan.chunks; ++c) {
          const double* p = group.data() + (b * plan.chunks + c) * G * 2;
          gs += p[g];
          gc += p[G + g];
        }
        const int64_t j = b * G + g;
        out.sum_g[j] = float(gs);
        out.sum_gx[j] = float(double(st.rstd[j]) * (gc - double(st.delta[j]) * gs));
      }
    }
  }
  // Parameter sums per instance, items in order.
  const int64_t items_per_instance = plan.items / geo.instances;
  for (int64_t inst = 0; inst < geo.instances; ++inst) {
    for (int64_t p = 0; p < P; ++p) {
      double ds = 0, db = 0;
      for (int64_t i = inst * items_per_instance; i < (inst + 1) * items_per_instance; ++i) {
        ds += param[i * P * 2 + p];
        db += param[i * P * 2 + P + p];
      }
      out.dscale[inst * P + p] = float(ds);
      out.dbias[inst * P + p] = float(db);
    }
  }
}

template <class T>
void run_dx(const Kernel<T>& kern, ffi::ThreadPool* pool, BackwardStats st,
            const float* scale_all, const float* sum_g, const float* sum_gx, T* dx) {
  const Geometry& geo = kern.geo;
  const int64_t G = geo.G, P = G * geo.Ks;
  std::vector<float> beta(geo.B * G), gamma(geo.B * G);
  for (int64_t j = 0; j < geo.B * G; ++j)
    dx_coefficients(geo.center, st.delta[j], st.rstd[j], st.count[j], sum_g[j], sum_gx[j],
                    &beta[j], &gamma[j]);
  parallel_for(pool, kern.plan.items, [&](int64_t i) {
    const Item it = item_at(geo, kern.plan, i);
    std::vector<float> work;
    for (int64_t b = it.b0; b < it.b1; ++b)
      dx_rows(kern, b, it.s0, it.s1, st.shift + b * G, st.rstd + b * G, beta.data() + b * G,
              gamma.data() + b * G, scale_all + geo.scale_row(b) * P, dx, work);
  });
}

// ----------------------------------------------------------------------------------
// FFI glue: shapes, dtypes and attributes checked here; dispatch on the element type.

ffi::Error check(bool ok, const char* what) {
  return ok ? ffi::Error::Success() : ffi::Error::InvalidArgument(what);
}

struct Attrs { bool center, masked; };

// The layout attribute: [nb, ns, ng, nk, instances]. x has nb + ns + ng + nk axes; the
// first nb form B, the next ns form S, then G and K (runs of the row-major array).
struct Runs {
  int64_t begin[4], end[4];
};

int64_t product(ffi::Span<const int64_t> d, int64_t begin, int64_t end, int64_t offset = 0) {
  int64_t n = 1;
  for (int64_t i = begin; i < end; ++i) n *= d[offset + i];
  return n;
}

// Whether operand axes [begin, end) (shifted by offset) all equal x's, or all are 1.
// Sets *full accordingly.
bool all_or_none(ffi::Span<const int64_t> d, ffi::Span<const int64_t> xd, int64_t begin,
                 int64_t end, int64_t offset, bool* full) {
  bool same = true, ones = true;
  for (int64_t i = begin; i < end; ++i) {
    same &= d[offset + i] == xd[i];
    ones &= d[offset + i] == 1;
  }
  *full = same;
  return same || ones;
}

ffi::Error make_geometry(const ffi::AnyBuffer& x, ffi::Span<const int64_t> layout,
                         const ffi::AnyBuffer* params, const ffi::AnyBuffer* bias,
                         const ffi::AnyBuffer* mask, Attrs a, Geometry* geo) {
  auto d = x.dimensions();
  const int64_t rank = int64_t(d.size());
  if (layout.size() != 5 || layout[0] + layout[1] + layout[2] + layout[3] != rank)
    return check(false, "jaxnorm kernels: layout must be [nb, ns, ng, nk, instances] with "
                        "nb + ns + ng + nk = rank of x");
  Runs runs;
  int64_t at = 0;
  for (int r = 0; r < 4; ++r) {
    runs.begin[r] = at;
    at += layout[r];
    runs.end[r] = at;
  }
  const int64_t instances = layout[4];
  *geo = Geometry{product(d, runs.begin[0], runs.end[0]), product(d, runs.begin[1], runs.end[1]),
                  product(d, runs.begin[2], runs.end[2]), product(d, runs.begin[3], runs.end[3]),
                  instances, 1, 1, 1, 1, 1, a.masked, a.center};
  if (instances < 1 || geo->B % instances)
    return check(false, "jaxnorm kernels: instances must divide B");
  for (const ffi::AnyBuffer* p : {params, bias}) {
    if (!p) continue;
    auto pd = p->dimensions();
    bool full_g, full_k;
    if (int64_t(pd.size()) != rank + 1 || p->element_type() != ffi::DataType::F32 ||
        (pd[0] != 1 && pd[0] != instances) || product(pd, runs.begin[0], runs.end[1], 1) != 1 ||
        !all_or_none(pd, d, runs.begin[2], runs.end[2], 1, &full_g) || !full_g ||
        !all_or_none(pd, d, runs.begin[3], runs.end[3], 1, &full_k))
      return check(false, "jaxnorm kernels: scale and bias must be float32 (1 or instances, "
                          "1 on B and S, x's sizes on G, x's sizes or 1 on K)");
    const int64_t ks = full_k ? geo->K : 1;
    if (p == params) {
      geo->Ks = ks;
      geo->scale_rows = pd[0];
    } else {
      if (params && ks != geo->Ks)
        return check(false, "jaxnorm kernels: scale and bias must have the same shape");
      geo->Ks = ks;
      geo->bias_rows = pd[0];
    }
  }
  if (mask && a.masked) {
    auto md = mask->dimensions();
    bool full_g, full_k;
    bool ok = int64_t(md.size()) == rank && mask->element_type() == ffi::DataType::PRED;
    for (int64_t i = runs.begin[0]; ok && i < runs.end[1]; ++i) ok = md[i] == d[i];
    ok = ok && all_or_none(md, d, runs.begin[2], runs.end[2], 0, &full_g) &&
         all_or_none(md, d, runs.begin[3], runs.end[3], 0, &full_k);
    if (!ok)
      return check(false, "jaxnorm kernels: mask must be bool with x's sizes on B and S, and "
                          "x's sizes or 1 on G and on K");
    geo->Gm = full_g ? geo->G : 1;
    geo->Km = full_k ? geo->K : 1;
  }
  return ffi::Error::Success();
}

template <class T>
Kernel<T> make_kernel(const Geometry& geo, const ffi::AnyBuffer& x, const ffi::AnyBuffer* dy,
                      const ffi::AnyBuffer* mask) {
  Kernel<T> kern;
  kern.geo = geo;
  kern.plan = make_plan(geo);
  kern.x = reinterpret_cast<const T*>(x.untyped_data());
  kern.dy = dy ? reinterpret_cast<const T*>(dy->untyped_data()) : nullptr;
  if (geo.masked)
    kern.mask = {reinterpret_cast<const uint8_t*>(mask->untyped_data()), geo.S, geo.Gm, geo.Km};
  return kern;
}

template <class F>
ffi::Error dispatch(ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::F32: return f(float{});
    case ffi::DataType::BF16: return f(bf16{});
    case ffi::DataType::F16: return f(f16{});
    default:
      return ffi::Error::InvalidArgument(
          "jaxnorm kernels: x must be float32, bfloat16 or float16");
  }
}

float* f32(ffi::Result<ffi::AnyBuffer>& r) { return reinterpret_cast<float*>(r->untyped_data()); }
const float* f32(const ffi::AnyBuffer& b) {
  return reinterpret_cast<const float*>(b.untyped_data());
}

// Statistics: float32 with B * G elements (x's shape with size 1 on S and K).
bool stats_shape(const ffi::AnyBuffer& s, const Geometry& geo) {
  return int64_t(s.element_count()) == geo.B * geo.G && s.element_type() == ffi::DataType::F32;
}

// Parameter cotangents: float32 with instances * G * Ks elements.
bool per_instance_shape(ffi::Result<ffi::AnyBuffer>& s, const Geometry& geo) {
  return int64_t(s->element_count()) == geo.instances * geo.G * geo.Ks &&
         s->element_type() == ffi::DataType::F32;
}

ffi::Error MomentsImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer mask,
                       ffi::Result<ffi::AnyBuffer> shift, ffi::Result<ffi::AnyBuffer> delta,
                       ffi::Result<ffi::AnyBuffer> var, ffi::Result<ffi::AnyBuffer> count,
                       ffi::Span<const int64_t> layout, bool center, bool masked) {
  Geometry geo;
  if (auto e = make_geometry(x, layout, nullptr, nullptr, &mask, {center, masked}, &geo);
      e.failure())
    return e;
  return dispatch(x.element_type(), [&](auto tag) {
    using T = decltype(tag);
    run_moments(make_kernel<T>(geo, x, nullptr, &mask), &pool,
                StatsOut{f32(shift), f32(delta), f32(var), f32(count)});
    return ffi::Error::Success();
  });
}

ffi::Error ApplyImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer shift,
                     ffi::AnyBuffer delta, ffi::AnyBuffer rstd, ffi::AnyBuffer scale,
                     ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y,
                     ffi::Span<const int64_t> layout) {
  Geometry geo;
  if (auto e = make_geometry(x, layout, &scale, &bias, nullptr, {true, false}, &geo);
      e.failure())
    return e;
  if (!stats_shape(shift, geo) || !stats_shape(delta, geo) || !stats_shape(rstd, geo))
    return check(false, "jaxnorm kernels: statistics must be float32 with B * G elements");
  return dispatch(x.element_type(), [&](auto tag) {
    using T = decltype(tag);
    run_apply(make_kernel<T>(geo, x, nullptr, nullptr), &pool, f32(shift), f32(delta),
              f32(rstd), Params{f32(scale), f32(bias)},
              reinterpret_cast<T*>(y->untyped_data()));
    return ffi::Error::Success();
  });
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer mask,
                       ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                       ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> shift,
                       ffi::Result<ffi::AnyBuffer> delta, ffi::Result<ffi::AnyBuffer> var,
                       ffi::Result<ffi::AnyBuffer> count, ffi::Span<const int64_t> layout, bool center,
                       bool masked, float epsilon) {
  Geometry geo;
  if (auto e = make_geometry(x, layout, &scale, &bias, &mask, {center, masked}, &geo);
      e.failure())
    return e;
  return dispatch(x.element_type(), [&](auto tag) {
    using T = decltype(tag);
    run_forward(make_kernel<T>(geo, x, nullptr, &mask), &pool,
                StatsOut{f32(shift), f32(delta), f32(var), f32(count)}, epsilon,
                Params{f32(scale), f32(bias)}, reinterpret_cast<T*>(y->untyped_data()));
    return ffi::Error::Success();
  });
}

ffi::Error BackwardSumsImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                            ffi::AnyBuffer shift, ffi::AnyBuffer delta, ffi::AnyBuffer rstd,
                            ffi::AnyBuffer scale, ffi::Result<ffi::AnyBuffer> sum_g,
                            ffi::Result<ffi::AnyBuffer> sum_gx,
                            ffi::Result<ffi::AnyBuffer> dscale,
                            ffi::Result<ffi::AnyBuffer> dbias, ffi::Span<const int64_t> layout,
                            bool center) {
  Geometry geo;
  if (auto e = make_geometry(x, layout, &scale, nullptr, nullptr, {center, false}, &geo);
      e.failure())
    return e;
  if (dy.element_type() != x.element_type() || dy.element_count() != x.element_count())
    return check(false, "jaxnorm kernels: dy must have x's shape and dtype");
  if (!stats_shape(shift, geo) || !stats_shape(delta, geo) || !stats_shape(rstd, geo))
    return check(false, "jaxnorm kernels: statistics must be float32 with B * G elements");
  if (!per_instance_shape(dscale, geo) || !per_instance_shape(dbias, geo))
    return check(false, "jaxnorm kernels: dscale and dbias must have instances * G * Ks elements");
  return dispatch(x.element_type(), [&](auto tag) {
    using T = decltype(tag);
    run_backward_sums<T>(make_kernel<T>(geo, x, &dy, nullptr), &pool,
                         BackwardStats{f32(shift), f32(delta), f32(rstd), nullptr}, f32(scale),
                         SumsOut{f32(sum_g), f32(sum_gx), f32(dscale), f32(dbias)}, nullptr);
    return ffi::Error::Success();
  });
}

ffi::Error BackwardDxImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                          ffi::AnyBuffer mask, ffi::AnyBuffer shift, ffi::AnyBuffer delta,
                          ffi::AnyBuffer rstd, ffi::AnyBuffer count, ffi::AnyBuffer scale,
                          ffi::AnyBuffer sum_g, ffi::AnyBuffer sum_gx,
                          ffi::Result<ffi::AnyBuffer> dx, ffi::Span<const int64_t> layout, bool center,
                          bool masked) {
  Geometry geo;
  if (auto e = make_geometry(x, layout, &scale, nullptr, &mask, {center, masked}, &geo);
      e.failure())
    return e;
  if (dy.element_type() != x.element_type() || dy.element_count() != x.element_count())
    return check(false, "jaxnorm kernels: dy must have x's shape and dtype");
  for (const ffi::AnyBuffer* s : {&shift, &delta, &rstd, &count, &sum_g, &sum_gx})
    if (!stats_shape(*s, geo))
      return check(false, "jaxnorm kernels: statistics must be float32 with B * G elements");
  return dispatch(x.element_type(), [&](auto tag) {
    using T = decltype(tag);
    run_dx<T>(make_kernel<T>(geo, x, &dy, &mask), &pool,
              BackwardStats{f32(shift), f32(delta), f32(rstd), f32(count)}, f32(scale),
              f32(sum_g), f32(sum_gx), reinterpret_cast<T*>(dx->untyped_data()));
    return ffi::Error::Success();
  });
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                        ffi::AnyBuffer mask, ffi::AnyBuffer shift, ffi::AnyBuffer delta,
                        ffi::AnyBuffer rstd, ffi::AnyBuffer count, ffi::AnyBuffer scale,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dscale,
                        ffi::Result<ffi::AnyBuffer> dbias, ffi::Span<const int64_t> layout, bool center,
                        bool masked) {
  Geometry geo;
  if (auto e = make_geometry(x, layout, &scale, nullptr, &mask, {center, masked}, &geo);
      e.failure())
    return e;
  if (dy.element_type() != x.element_type() || dy.element_count() != x.element_count())
    return check(false, "jaxnorm kernels: dy must have x's shape and dtype");
  for (const ffi::AnyBuffer* s : {&shift, &delta, &rstd, &count})
    if (!stats_shape(*s, geo))
      return check(false, "jaxnorm kernels: statistics must be float32 with B * G elements");
  if (!per_instance_shape(dscale, geo) || !per_instance_shape(dbias, geo))
    return check(false, "jaxnorm kernels: dscale and dbias must have instances * G * Ks elements");
  return dispatch(x.element_type(), [&](auto tag) {
    using T = decltype(tag);
    const Kernel<T> kern = make_kernel<T>(geo, x, &dy, &mask);
    BackwardStats st{f32(shift), f32(delta), f32(rstd), f32(count)};
    T* out = reinterpret_cast<T*>(dx->untyped_data());
    std::vector<float> sum_g(geo.B * geo.G), sum_gx(geo.B * geo.G);
    SumsOut sums{sum_g.data(), sum_gx.data(), f32(dscale), f32(dbias)};
    if (kern.plan.by_rows) {
      run_backward_sums<T>(kern, &pool, st, f32(scale), sums, out);
    } else {
      run_backward_sums<T>(kern, &pool, st, f32(scale), sums, nullptr);
      run_dx<T>(kern, &pool, st, f32(scale), sum_g.data(), sum_gx.data(), out);
    }
    return ffi::Error::Success();
  });
}

}  // namespace
}  // namespace jaxnorm

// ----------------------------------------------------------------------------------
// Exported handlers (C symbols, looked up by the Python loader through ctypes). The
// library is built with hidden visibility; these declarations make the handlers public.

#define JAXNORM_EXPORT(name) \
  extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* name(XLA_FFI_CallFrame*);
JAXNORM_EXPORT(JaxnormNormMoments)
JAXNORM_EXPORT(JaxnormNormApply)
JAXNORM_EXPORT(JaxnormNormForward)
JAXNORM_EXPORT(JaxnormNormBackwardSums)
JAXNORM_EXPORT(JaxnormNormBackwardDx)
JAXNORM_EXPORT(JaxnormNormBackward)

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnormNormMoments, jaxnorm::MomentsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x
                                  .Arg<ffi::AnyBuffer>()   // mask
                                  .Ret<ffi::AnyBuffer>()   // shift
                                  .Ret<ffi::AnyBuffer>()   // delta
                                  .Ret<ffi::AnyBuffer>()   // var
                                  .Ret<ffi::AnyBuffer>()   // count
                                  .Attr<ffi::Span<const int64_t>>("layout")
                                  .Attr<bool>("center")
                                  .Attr<bool>("masked"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnormNormApply, jaxnorm::ApplyImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x
                                  .Arg<ffi::AnyBuffer>()   // shift
                                  .Arg<ffi::AnyBuffer>()   // delta
                                  .Arg<ffi::AnyBuffer>()   // rstd
                                  .Arg<ffi::AnyBuffer>()   // scale
                                  .Arg<ffi::AnyBuffer>()   // bias
                                  .Ret<ffi::AnyBuffer>()   // y
                                  .Attr<ffi::Span<const int64_t>>("layout"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnormNormForward, jaxnorm::ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x
                                  .Arg<ffi::AnyBuffer>()   // mask
                                  .Arg<ffi::AnyBuffer>()   // scale
                                  .Arg<ffi::AnyBuffer>()   // bias
                                  .Ret<ffi::AnyBuffer>()   // y
                                  .Ret<ffi::AnyBuffer>()   // shift
                                  .Ret<ffi::AnyBuffer>()   // delta
                                  .Ret<ffi::AnyBuffer>()   // var
                                  .Ret<ffi::AnyBuffer>()   // count
                                  .Attr<ffi::Span<const int64_t>>("layout")
                                  .Attr<bool>("center")
                                  .Attr<bool>("masked")
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnormNormBackwardSums, jaxnorm::BackwardSumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x
                                  .Arg<ffi::AnyBuffer>()   // dy
                                  .Arg<ffi::AnyBuffer>()   // shift
                                  .Arg<ffi::AnyBuffer>()   // delta
                                  .Arg<ffi::AnyBuffer>()   // rstd
                                  .Arg<ffi::AnyBuffer>()   // scale
                                  .Ret<ffi::AnyBuffer>()   // sum_g
                                  .Ret<ffi::AnyBuffer>()   // sum_gx
                                  .Ret<ffi::AnyBuffer>()   // dscale
                                  .Ret<ffi::AnyBuffer>()   // dbias
                                  .Attr<ffi::Span<const int64_t>>("layout")
                                  .Attr<bool>("center"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnormNormBackwardDx, jaxnorm::BackwardDxImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x
                                  .Arg<ffi::AnyBuffer>()   // dy
                                  .Arg<ffi::AnyBuffer>()   // mask
                                  .Arg<ffi::AnyBuffer>()   // shift
                                  .Arg<ffi::AnyBuffer>()   // delta
                                  .Arg<ffi::AnyBuffer>()   // rstd
                                  .Arg<ffi::AnyBuffer>()   // count
                                  .Arg<ffi::AnyBuffer>()   // scale
                                  .Arg<ffi::AnyBuffer>()   // sum_g
                                  .Arg<ffi::AnyBuffer>()   // sum_gx
                                  .Ret<ffi::AnyBuffer>()   // dx
                                  .Attr<ffi::Span<const int64_t>>("layout")
                                  .Attr<bool>("center")
                                  .Attr<bool>("masked"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnormNormBackward, jaxnorm::BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()   // x
                                  .Arg<ffi::AnyBuffer>()   // dy
                                  .Arg<ffi::AnyBuffer>()   // mask
                                  .Arg<ffi::AnyBuffer>()   // shift
                                  .Arg<ffi::AnyBuffer>()   // delta
                                  .Arg<ffi::AnyBuffer>()   // rstd
                                  .Arg<ffi::AnyBuffer>()   // count
                                  .Arg<ffi::AnyBuffer>()   // scale
                                  .Ret<ffi::AnyBuffer>()   // dx
                                  .Ret<ffi::AnyBuffer>()   // dscale
                                  .Ret<ffi::AnyBuffer>()   // dbias
                                  .Attr<ffi::Span<const int64_t>>("layout")
                                  .Attr<bool>("center")
                                  .Attr<bool>("masked"));

// The interface version the Python side expects; bumped when a handler's signature
// changes, so that a stale build is detected instead of crashing.
extern "C" __attribute__((visibility("default"))) int jaxnorm_kernels_abi_version() {
  return 1;
}

