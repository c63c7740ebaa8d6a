// Item packing: [N, D] rows (any strides) -> panels of kPanel items, D-major inside a panel,
// the layout the scan kernels stream. The last panel is zero-padded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#include "scan.h"

namespace twotower {

// A 64-byte aligned buffer of T (RAII); contents are uninitialised.
template <typename T>
struct AlignedArray {
    struct Free {
        void operator()(T* p) const noexcept { std::free(p); }
    };
    std::unique_ptr<T[], Free> data;
    int64_t size = 0;
    void resize(int64_t count) {  // discards contents; throws std::bad_alloc
        if (count == size && data) return;
        const size_t bytes = ((static_cast<size_t>(count > 0 ? count : 1) * sizeof(T) + 63) / 64) * 64;
        void* p = std::aligned_alloc(64, bytes);
        if (!p) throw std::bad_alloc();
        data.reset(static_cast<T*>(p));
        size = count;
    }
};
using AlignedFloats = AlignedArray<float>;

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
