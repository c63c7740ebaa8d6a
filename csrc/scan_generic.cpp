// Portable scan for any CPU: plain loops over a panel that the compiler vectorises with the
// baseline instruction set (SSE2 on x86-64). Multiply and add are separate roundings here, so
// scores may differ from the FMA paths in the last bit; ids agree except on such near-ties.
#include <cmath>

#include "scan.h"

namespace twotower {
namespace generic {  // named, so a disassembly shows which kernel a function belongs to
namespace {

template <int NQ>
void scan_rows(const ScanTask& t, int64_t q0) {
    const float* q[NQ];
    for (int i = 0; i < NQ; ++i) q[i] = t.queries + (q0 + i) * t.query_stride;
    QueryState* states = t.states + q0;
    for (int64_t p = 0; p < t.num_panels; ++p) {
        const float* a = t.panels + p * t.dim * kPanel;
        float acc[NQ][kPanel] = {};
        for (int64_t d = 0; d < t.dim; ++d) {
            const float* row = a + d * kPanel;
            for (int i = 0; i < NQ; ++i) {
                const float qd = q[i][d];
                for (int lane = 0; lane < kPanel; ++lane) acc[i][lane] += qd * row[lane];
            }
        }
        for (int i = 0; i < NQ; ++i) {
            QueryState& state = states[i];
            uint32_t hits = state.accept_all;
            for (int lane = 0; lane < kPanel; ++lane)
                hits |= static_cast<uint32_t>(acc[i][lane] > state.threshold) << lane;
            if (hits) offer_panel(state, acc[i], hits, t.first_item + p * kPanel, t.num_items);
        }
    }
}

}  // namespace
}  // namespace generic

void scan_generic(const ScanTask& t) {
    constexpr int kRows = 4;
    int64_t q0 = 0;
    for (; q0 + kRows <= t.num_queries; q0 += kRows) generic::scan_rows<kRows>(t, q0);
    switch (t.num_queries - q0) {
        case 3: generic::scan_rows<3>(t, q0); break;
        case 2: generic::scan_rows<2>(t, q0); break;
        case 1: generic::scan_rows<1>(t, q0); break;
        default: break;
    }
}

}  // namespace twotower
