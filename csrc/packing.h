// Item packing: [N, D] rows (any strides) -> panels of kPanel items, D-major inside a panel,
// the layout the scan kernels stream. The last panel is zero-padded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "scan.h"

namespace twotower {

// A 64-byte aligned float buffer (RAII).
struct AlignedFloats {
    struct Free {
        void operator()(float* p) const noexcept;
    };
    std::unique_ptr<float[], Free> data;
    int64_t size = 0;
    void resize(int64_t count);  // discards contents; throws std::bad_alloc
};

// Row-major view of an item matrix with element strides (may be negative).
struct ItemView {
    const float* data;
    int64_t num_items;
    int64_t dim;
    int64_t row_stride;
    int64_t col_stride;
};

inline int64_t num_panels_for(int64_t num_items) { return (num_items + kPanel - 1) / kPanel; }

// Packs panels [first_panel, first_panel + count) of `items` into `out` (count * dim * kPanel floats).
void pack_panels(const ItemView& items, int64_t first_panel, int64_t count, float* out);

}  // namespace twotower
