// AVX2 + FMA scan: NQ queries x 1 panel (16 items = 2 ymm) accumulated in 2*NQ ymm registers.
// Compiled with -mavx2 -mfma only.
#include <immintrin.h>

#include "scan.h"

namespace twotower {
namespace avx2 {  // named, so a disassembly shows which kernel a function belongs to
namespace {

inline void check(const __m256 lo, const __m256 hi, QueryState& state, int64_t first_id, int64_t num_items) {
    const __m256 threshold = _mm256_set1_ps(state.threshold);
    const uint32_t hits =
        (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(lo, threshold, _CMP_GT_OQ))) |
         (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(hi, threshold, _CMP_GT_OQ))) << 8)) |
        state.accept_all;
    if (hits) {
        alignas(32) float scores[kPanel];
        _mm256_store_ps(scores, lo);
        _mm256_store_ps(scores + 8, hi);
        offer_panel(state, scores, hits, first_id, num_items);
    }
}

template <int NQ>
void scan_rows(const ScanTask& t, int64_t q0) {
    const float* q[NQ];
    for (int i = 0; i < NQ; ++i) q[i] = t.queries + (q0 + i) * t.query_stride;
    QueryState* states = t.states + q0;
    const int64_t dim = t.dim;
    for (int64_t p = 0; p < t.num_panels; ++p) {
        const float* a = t.panels + p * dim * kPanel;
        __m256 lo[NQ], hi[NQ];
        for (int i = 0; i < NQ; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
        for (int64_t d = 0; d < dim; ++d) {
            const __m256 va = _mm256_loadu_ps(a + d * kPanel);
            const __m256 vb = _mm256_loadu_ps(a + d * kPanel + 8);
            for (int i = 0; i < NQ; ++i) {
                const __m256 vq = _mm256_broadcast_ss(q[i] + d);
                lo[i] = _mm256_fmadd_ps(vq, va, lo[i]);
                hi[i] = _mm256_fmadd_ps(vq, vb, hi[i]);
            }
        }
        for (int i = 0; i < NQ; ++i) check(lo[i], hi[i], states[i], t.first_item + p * kPanel, t.num_items);
    }
}

}  // namespace
}  // namespace avx2

void scan_avx2(const ScanTask& t) {
    constexpr int kRows = 6;
    int64_t q0 = 0;
    for (; q0 + kRows <= t.num_queries; q0 += kRows) avx2::scan_rows<kRows>(t, q0);
    switch (t.num_queries - q0) {
        case 5: avx2::scan_rows<5>(t, q0); break;
        case 4: avx2::scan_rows<4>(t, q0); break;
        case 3: avx2::scan_rows<3>(t, q0); break;
        case 2: avx2::scan_rows<2>(t, q0); break;
        case 1: avx2::scan_rows<1>(t, q0); break;
        default: break;
    }
}

}  // namespace twotower
