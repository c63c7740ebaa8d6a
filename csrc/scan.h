// Shared declarations of the scoring kernels. Each kernel lives in its own translation unit,
// compiled for one instruction set; this header holds only plain structs and declarations so that
// no inline code compiled for AVX-512 can leak into the generic path through the linker.
#pragma once

#include <cstdint>

namespace twotower {

// Items are packed in panels of kPanel items, D-major inside a panel: panel[d * kPanel + lane].
constexpr int kPanel = 16;

// One query's bounded selection. The scan kernels read `threshold` and `accept_all` only;
// everything else belongs to selection.cpp.
struct QueryState {
    float threshold;       // a candidate must score strictly above this (when accept_all == 0)
    uint32_t accept_all;   // all-ones while the heap is not full or its worst entry is NaN
    float* heap_scores;    // capacity entries; a max-heap on "rank worse"
    int64_t* heap_ids;
    int64_t size;
    int64_t capacity;
    const int64_t* exclude_begin;  // sorted item ids this query must skip
    const int64_t* exclude_end;
};

// Offers the lanes set in `mask` of one panel's scores (ids first_id + lane) to `state`.
// Lanes whose id is >= num_items (the zero padding of the last panel) are ignored.
void offer_panel(QueryState& state, const float* scores, uint32_t mask, int64_t first_id, int64_t num_items);

// Scores `num_queries` queries against `num_panels` packed panels and offers every candidate that can
// enter a query's top-k to that query's state. Scores never leave registers otherwise.
struct ScanTask {
    const float* queries;   // row q at queries + q * query_stride, D contiguous floats
    int64_t query_stride;
    int64_t num_queries;
    int64_t dim;
    const float* panels;    // num_panels * dim * kPanel floats
    int64_t num_panels;
    int64_t first_item;     // id of lane 0 of the first panel
    int64_t num_items;      // total items N (ids >= N are padding)
    QueryState* states;     // num_queries states, aligned with the queries
};

void scan_generic(const ScanTask& task);
#if defined(TWOTOWER_X86)
void scan_avx2(const ScanTask& task);
void scan_avx512(const ScanTask& task);
#endif

}  // namespace twotower
