// AVX-512 VNNI scan over int8 codes: NQ queries x NP panels accumulated in int32 zmm registers with
// vpdpbusd (64 byte products per instruction, ~2.5x the multiply-adds of the float32 kernel on the
// same core), then turned into bounds of each score (scan.h): an upper bound that reaches the
// query's threshold makes the item a candidate.
// Also the AVX-512 row coder of the screening pass (quantize.cpp's fast path).
// Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mfma only.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "scan.h"

namespace twotower {
namespace avx512_vnni {  // named, so a disassembly shows which kernel a function belongs to
namespace {

// The panel's per-item floats, loaded once for all queries of a block.
struct PanelFloats {
    __m512 scale, residual, span;
};

inline void check(const __m512i acc, const PanelFloats& item, const __m512 code_norm, const __m512 residual,
                  const __m512 margin, QueryState& state, int64_t first_id, int64_t num_items) {
    const __m512 slack = _mm512_fmadd_ps(code_norm, item.residual, _mm512_fmadd_ps(residual, item.span, margin));
    const __m512 approx = _mm512_cvtepi32_ps(acc);
    const __m512 upper = _mm512_fmadd_ps(approx, item.scale, slack);
    const uint32_t hits =
        static_cast<uint32_t>(_mm512_cmp_ps_mask(upper, _mm512_set1_ps(state.threshold), _CMP_GE_OQ)) |
        state.accept_all;
    if (hits) {
        alignas(64) float lower_bounds[kPanel], upper_bounds[kPanel];
        _mm512_store_ps(lower_bounds, _mm512_fmsub_ps(approx, item.scale, slack));
        _mm512_store_ps(upper_bounds, upper);
        offer_bounds(state, lower_bounds, upper_bounds, hits, first_id, num_items);
    }
}

// The lanes of a 16-wide step that still hold values, `left` of them remaining.
inline __mmask16 lanes_left(int64_t left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }

inline __m512i query_group(const int8_t* q, int64_t g) {
    int32_t word;
    std::memcpy(&word, q + g * 4, sizeof(word));
    return _mm512_set1_epi32(word);
}

template <int NQ, int NP>
void scan_block(const CodeScanTask& t, int64_t q0, int64_t p) {
    const int64_t panel_bytes = t.dim * kPanel;
    const int64_t groups = t.dim / 4;
    const int8_t* q[NQ];
    for (int i = 0; i < NQ; ++i) q[i] = t.queries + (q0 + i) * t.dim;
    const uint8_t* panel = t.panels + p * panel_bytes;
    __m512i acc[NQ][NP];
    for (int i = 0; i < NQ; ++i)
        for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_set1_epi32(t.offsets[q0 + i]);
    for (int64_t g = 0; g < groups; ++g) {
        __m512i x[NP];
        for (int j = 0; j < NP; ++j) x[j] = _mm512_loadu_si512(panel + j * panel_bytes + g * 64);
        for (int i = 0; i < NQ; ++i) {
            const __m512i vq = query_group(q[i], g);
            for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], x[j], vq);
        }
    }
    const int64_t id = t.first_item + p * kPanel;
    for (int j = 0; j < NP; ++j) {
        const int64_t at = (p + j) * kPanel;
        const PanelFloats item{_mm512_loadu_ps(t.item_scales + at), _mm512_loadu_ps(t.item_residuals + at),
                               _mm512_loadu_ps(t.item_spans + at)};
        for (int i = 0; i < NQ; ++i)
            check(acc[i][j], item, _mm512_set1_ps(t.code_norms[q0 + i]), _mm512_set1_ps(t.residuals[q0 + i]),
                  _mm512_set1_ps(t.margins[q0 + i]), t.states[q0 + i], id + j * kPanel, t.num_items);
    }
}

template <int NQ>
void scan_rows(const CodeScanTask& t, int64_t q0) {
    constexpr int kPanels = NQ > 4 ? 2 : 4;
    int64_t p = 0;
    for (; p + kPanels <= t.num_panels; p += kPanels) scan_block<NQ, kPanels>(t, q0, p);
    for (; p < t.num_panels; ++p) scan_block<NQ, 1>(t, q0, p);
}

}  // namespace
}  // namespace avx512_vnni

void scan_codes_avx512_vnni(const CodeScanTask& t) {
    constexpr int kRows = 8;
    int64_t q0 = 0;
    for (; q0 + kRows <= t.num_queries; q0 += kRows) avx512_vnni::scan_rows<kRows>(t, q0);
    switch (t.num_queries - q0) {
        case 7: avx512_vnni::scan_rows<7>(t, q0); break;
        case 6: avx512_vnni::scan_rows<6>(t, q0); break;
        case 5: avx512_vnni::scan_rows<5>(t, q0); break;
        case 4: avx512_vnni::scan_rows<4>(t, q0); break;
        case 3: avx512_vnni::scan_rows<3>(t, q0); break;
        case 2: avx512_vnni::scan_rows<2>(t, q0); break;
        case 1: avx512_vnni::scan_rows<1>(t, q0); break;
        default: break;
    }
}

bool code_row_avx512_vnni(const float* row, int64_t dim, int8_t* codes, RowCode& out) {
    const __m512i abs_bits = _mm512_set1_epi32(0x7fffffff);
    __m512i max_bits = _mm512_setzero_si512();
    for (int64_t d = 0; d < dim; d += 16) {
        const __mmask16 m = avx512_vnni::lanes_left(dim - d);
        max_bits = _mm512_max_epu32(max_bits, _mm512_and_si512(_mm512_maskz_loadu_epi32(m, row + d), abs_bits));
    }
    const uint32_t bits = _mm512_reduce_max_epu32(max_bits);
    float max_abs;
    std::memcpy(&max_abs, &bits, sizeof(max_abs));
    out.scale = 0.0f;
    out.code_norm = out.residual_norm = 0.0;
    out.finite = bits < 0x7f800000u;  // no NaN or infinity
    out.max_abs = out.finite ? max_abs : INFINITY;
    if (!out.finite || bits == 0) {
        std::memset(codes, 0, static_cast<size_t>(dim));
        return true;
    }
    const float inverse = 127.0f / max_abs;
    if (!std::isfinite(inverse)) return false;
    out.scale = max_abs / 127.0f;
    const __m512 inv = _mm512_set1_ps(inverse);
    const __m512d scale = _mm512_set1_pd(out.scale);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512d code_sq = _mm512_setzero_pd(), residual_sq = _mm512_setzero_pd();
    for (int64_t d = 0; d < dim; d += 16) {
        const __mmask16 m = avx512_vnni::lanes_left(dim - d);
        const __m512 x = _mm512_maskz_loadu_ps(m, row + d);  // masked-off lanes are 0: code 0, residual 0
        const __m512i c = _mm512_min_epi32(hi, _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(x, inv))));
        _mm512_mask_cvtepi32_storeu_epi8(codes + d, m, c);
        for (int half = 0; half < 2; ++half) {  // the norms in double: scale * code and x - scale * code are exact
            const __m512d xd = _mm512_cvtps_pd(half ? _mm512_extractf32x8_ps(x, 1) : _mm512_castps512_ps256(x));
            const __m512d coded =
                _mm512_mul_pd(scale, _mm512_cvtepi32_pd(half ? _mm512_extracti64x4_epi64(c, 1) : _mm512_castsi512_si256(c)));
            const __m512d residual = _mm512_sub_pd(xd, coded);
            code_sq = _mm512_fmadd_pd(coded, coded, code_sq);
            residual_sq = _mm512_fmadd_pd(residual, residual, residual_sq);
        }
    }
    out.code_norm = std::sqrt(_mm512_reduce_add_pd(code_sq));
    out.residual_norm = std::sqrt(_mm512_reduce_add_pd(residual_sq));
    return true;
}

float kth_largest_avx512_vnni(const float* values, int64_t n, int64_t k, uint32_t* keys) {
    // key(x): flip every bit of a negative float and the sign bit of a positive one, so that keys
    // compare as unsigned integers in the order of the floats (-0 just below +0).
    const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = avx512_vnni::lanes_left(n - i);
        const __m512i bits = _mm512_maskz_loadu_epi32(m, values + i);
        const __mmask16 negative = _mm512_test_epi32_mask(bits, sign);
        const __m512i key = _mm512_mask_xor_epi32(_mm512_or_si512(bits, sign), negative, bits, _mm512_set1_epi32(-1));
        _mm512_mask_storeu_epi32(keys + i, m, key);
    }
    uint32_t found = 0;  // the largest key with at least k keys >= it, one bit at a time
    for (int bit = 31; bit >= 0; --bit) {
        const uint32_t trial = found | (1u << bit);
        const __m512i t = _mm512_set1_epi32(static_cast<int>(trial));
        int64_t count = 0;
        for (int64_t i = 0; i < n; i += 16) {
            const __mmask16 m = avx512_vnni::lanes_left(n - i);
            count += __builtin_popcount(_mm512_mask_cmpge_epu32_mask(m, _mm512_maskz_loadu_epi32(m, keys + i), t));
        }
        if (count >= k) found = trial;
    }
    const uint32_t bits = (found & 0x80000000u) ? (found & 0x7fffffffu) : ~found;
    float out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
}

void rescore_avx512_vnni(const float* query, const float* items, int64_t row_stride, int64_t col_stride,
                         int64_t dim, const int64_t* ids, int64_t count, float* scores) {
    // Eight candidates at a time: eight independent chains of fused multiply-adds (one chain would
    // wait on each one's latency), and the next eight rows prefetched while these are summed.
    constexpr int kWays = 8;
    const int64_t row_bytes = dim * col_stride * static_cast<int64_t>(sizeof(float));
    int64_t i = 0;
    for (; i + kWays <= count; i += kWays) {
        const float* row[kWays];
        for (int j = 0; j < kWays; ++j) row[j] = items + ids[i + j] * row_stride;
        if (i + 2 * kWays <= count && col_stride == 1)
            for (int j = 0; j < kWays; ++j) {
                const char* next = reinterpret_cast<const char*>(items + ids[i + kWays + j] * row_stride);
                for (int64_t line = 0; line < row_bytes; line += 64) __builtin_prefetch(next + line);
            }
        float acc[kWays] = {};
        for (int64_t d = 0; d < dim; ++d) {
            const float q = query[d];
            for (int j = 0; j < kWays; ++j) acc[j] = std::fma(q, row[j][d * col_stride], acc[j]);
        }
        for (int j = 0; j < kWays; ++j) scores[i + j] = acc[j];
    }
    for (; i < count; ++i) {
        const float* row = items + ids[i] * row_stride;
        float acc = 0.0f;
        for (int64_t d = 0; d < dim; ++d) acc = std::fma(query[d], row[d * col_stride], acc);
        scores[i] = acc;
    }
}

}  // namespace twotower
