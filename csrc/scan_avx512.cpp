// AVX-512 scan: NQ queries x 2 panels (32 items) accumulated in 2*NQ zmm registers, then one
// compare per register against each query's current k-th score. Compiled with -mavx512f only.
#include <immintrin.h>

#include "scan.h"

namespace twotower {
namespace avx512 {  // named, so a disassembly shows which kernel a function belongs to
namespace {

inline void check(const __m512 acc, QueryState& state, int64_t first_id, int64_t num_items) {
    const uint32_t hits =
        static_cast<uint32_t>(_mm512_cmp_ps_mask(acc, _mm512_set1_ps(state.threshold), _CMP_GT_OQ)) |
        state.accept_all;
    if (hits) {
        alignas(64) float scores[kPanel];
        _mm512_store_ps(scores, acc);
        offer_panel(state, scores, hits, first_id, num_items);
    }
}

template <int NQ>
void scan_rows(const ScanTask& t, int64_t q0) {
    const float* q[NQ];
    for (int i = 0; i < NQ; ++i) q[i] = t.queries + (q0 + i) * t.query_stride;
    QueryState* states = t.states + q0;
    const int64_t dim = t.dim;
    const int64_t panel_floats = dim * kPanel;
    int64_t p = 0;
    for (; p + 2 <= t.num_panels; p += 2) {
        const float* a = t.panels + p * panel_floats;
        const float* b = a + panel_floats;
        __m512 acc_a[NQ], acc_b[NQ];
        for (int i = 0; i < NQ; ++i) acc_a[i] = acc_b[i] = _mm512_setzero_ps();
        for (int64_t d = 0; d < dim; ++d) {
            const __m512 va = _mm512_loadu_ps(a + d * kPanel);
            const __m512 vb = _mm512_loadu_ps(b + d * kPanel);
            for (int i = 0; i < NQ; ++i) {
                const __m512 vq = _mm512_set1_ps(q[i][d]);
                acc_a[i] = _mm512_fmadd_ps(vq, va, acc_a[i]);
                acc_b[i] = _mm512_fmadd_ps(vq, vb, acc_b[i]);
            }
        }
        const int64_t id = t.first_item + p * kPanel;
        for (int i = 0; i < NQ; ++i) {
            check(acc_a[i], states[i], id, t.num_items);
            check(acc_b[i], states[i], id + kPanel, t.num_items);
        }
    }
    if (p < t.num_panels) {
        const float* a = t.panels + p * panel_floats;
        __m512 acc[NQ];
        for (int i = 0; i < NQ; ++i) acc[i] = _mm512_setzero_ps();
        for (int64_t d = 0; d < dim; ++d) {
            const __m512 va = _mm512_loadu_ps(a + d * kPanel);
            for (int i = 0; i < NQ; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d]), va, acc[i]);
        }
        for (int i = 0; i < NQ; ++i) check(acc[i], states[i], t.first_item + p * kPanel, t.num_items);
    }
}

}  // namespace
}  // namespace avx512

void scan_avx512(const ScanTask& t) {
    constexpr int kRows = 8;
    int64_t q0 = 0;
    for (; q0 + kRows <= t.num_queries; q0 += kRows) avx512::scan_rows<kRows>(t, q0);
    switch (t.num_queries - q0) {
        case 7: avx512::scan_rows<7>(t, q0); break;
        case 6: avx512::scan_rows<6>(t, q0); break;
        case 5: avx512::scan_rows<5>(t, q0); break;
        case 4: avx512::scan_rows<4>(t, q0); break;
        case 3: avx512::scan_rows<3>(t, q0); break;
        case 2: avx512::scan_rows<2>(t, q0); break;
        case 1: avx512::scan_rows<1>(t, q0); break;
        default: break;
    }
}

}  // namespace twotower
