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
    float threshold;       // unless accept_all: a float32 score must be above it, a screening upper bound reach it
    uint32_t accept_all;   // all-ones while the heap is not full or its worst entry is NaN
    float* heap_scores;    // capacity entries; a max-heap on "rank worse"
    int64_t* heap_ids;
    int64_t size;
    int64_t capacity;
    const int64_t* exclude_begin;  // sorted item ids this query must skip
    const int64_t* exclude_end;
    // The screening scan's candidates (screen.cpp): items whose upper bound reaches the threshold,
    // which there is the k-th best lower bound among them as of the last compaction.
    float* candidate_upper;
    float* candidate_lower;
    int64_t* candidate_ids;
    uint32_t* candidate_scratch;   // capacity entries for the compaction's selection
    int64_t candidate_count;
    int64_t candidate_limit;       // compact when the list reaches this (<= capacity)
    int64_t candidate_capacity;    // 0: the float32 scan, which keeps no candidates
    bool candidates_overflowed;    // too many candidates stayed: the query needs the float32 scan
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

// The int8 screening scan (screen.cpp): the same selection on bounds of each score in units of the
// query's scale, approx +- slack with approx = code_q . code_x * scale_x and
// slack = |code_q| * residual_x + residual_q * span_x + margin_q. Every item whose upper bound
// reaches the k-th best lower bound is a candidate (offer_bounds).
struct CodeScanTask {
    const int8_t* queries;         // row q at queries + q * padded dim (quantize.h)
    const int32_t* offsets;        // per query, added to every accumulator
    const float* code_norms;       // per query: |code_q|
    const float* residuals;        // per query: residual_q / scale_q
    const float* margins;          // per query: rounding margin
    int64_t num_queries;
    int64_t dim;                   // padded to a multiple of 4
    const uint8_t* panels;         // num_panels * dim * kPanel bytes (quantize.h's layout)
    const float* item_scales;      // num_panels * kPanel each
    const float* item_residuals;
    const float* item_spans;
    int64_t num_panels;
    int64_t first_item;
    int64_t num_items;
    QueryState* states;
};

// One row coded as scale * code + residual (quantize.h): codes are integers in [-127, 127].
struct RowCode {
    float scale;           // max |x| / 127; 0 for a zero or non-finite row (whose codes are 0)
    double code_norm;      // ||scale * code||
    double residual_norm;  // ||x - scale * code||
    double max_abs;        // max |x| (infinity for a non-finite row)
    bool finite;
};

void scan_generic(const ScanTask& task);
#if defined(TWOTOWER_X86)
void scan_avx2(const ScanTask& task);
void scan_avx512(const ScanTask& task);
void scan_codes_avx512_vnni(const CodeScanTask& task);
// The screening scan's offer (portable code in selection.cpp, called by the screening kernel only):
// each lane in `mask` whose upper bound reaches the threshold becomes a candidate. A full list is
// compacted: the threshold rises to the k-th best lower bound in it (k is the state's capacity) and
// the candidates whose upper bound falls below it are dropped; no heap.
void offer_bounds(QueryState& state, const float* lower, const float* upper, uint32_t mask, int64_t first_id,
                  int64_t num_items);
// Codes a contiguous row into codes[0, dim); false (nothing written) for rows it leaves to the
// portable coder (values so small that 127 / max |x| overflows).
bool code_row_avx512_vnni(const float* row, int64_t dim, int8_t* codes, RowCode& out);
// The k-th largest of values[0, n) (1 <= k <= n, no NaN), by a bitwise search over an order-keeping
// integer key: 32 counting passes, branch-free, instead of a selection that reorders the values.
// `keys` is scratch for n entries.
float kth_largest_avx512_vnni(const float* values, int64_t n, int64_t k, uint32_t* keys);
// Float32 scores of `count` item rows (ids[i]; element (i, d) at items[i * row_stride + d * col_stride])
// for one query, summed in the order of the float32 scan kernels (one fused multiply-add per dim,
// dim 0 first), so that a rescored candidate gets exactly the score scan_avx512 would have given it.
void rescore_avx512_vnni(const float* query, const float* items, int64_t row_stride, int64_t col_stride,
                         int64_t dim, const int64_t* ids, int64_t count, float* scores);
#endif

}  // namespace twotower
