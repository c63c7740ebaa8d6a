#include "packing.h"

namespace twotower {

void pack_panels(const ItemView& items, int64_t first_panel, int64_t count, float* out) {
    const int64_t dim = items.dim;
    for (int64_t p = 0; p < count; ++p) {
        float* panel = out + p * dim * kPanel;
        const int64_t first = (first_panel + p) * kPanel;
        for (int lane = 0; lane < kPanel; ++lane) {
            const int64_t item = first + lane;
            if (item < items.num_items) {
                const float* row = items.data + item * items.row_stride;
                if (items.col_stride == 1) {
                    for (int64_t d = 0; d < dim; ++d) panel[d * kPanel + lane] = row[d];
                } else {
                    for (int64_t d = 0; d < dim; ++d) panel[d * kPanel + lane] = row[d * items.col_stride];
                }
            } else {
                for (int64_t d = 0; d < dim; ++d) panel[d * kPanel + lane] = 0.0f;
            }
        }
    }
}

}  // namespace twotower
