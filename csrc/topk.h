// Exact top-k by inner product with per-query exclusion: the driver that splits the work over
// threads and item blocks and runs the chosen scan kernel. No Python in here.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu_features.h"
#include "packing.h"

namespace twotower {

struct TopKArgs {
    const float* queries;        // row q at queries + q * query_stride, dim contiguous floats
    int64_t num_queries;
    int64_t query_stride;
    int64_t dim;
    int64_t k;
    const int64_t* exclude_indptr;  // [num_queries + 1] or null
    const int64_t* exclude_ids;     // sorted within each row
    int num_threads;
    ScanFn scan;
    float* out_scores;           // [num_queries, k]
    int64_t* out_ids;            // [num_queries, k]
};

// An item matrix packed once into panels and reused across searches.
class PackedItems {
  public:
    PackedItems(const ItemView& items, int num_threads);
    int64_t num_items() const { return num_items_; }
    int64_t dim() const { return dim_; }
    int64_t num_panels() const { return num_panels_of(num_items_); }
    const float* panels() const { return panels_.data.get(); }
    int64_t nbytes() const { return panels_.size * static_cast<int64_t>(sizeof(float)); }

  private:
    static int64_t num_panels_of(int64_t n) { return num_panels_for(n); }
    AlignedFloats panels_;
    int64_t num_items_;
    int64_t dim_;
};

// Top-k against prepacked items.
void topk_packed(const TopKArgs& args, const PackedItems& items);
// Top-k against a raw item matrix, packed block by block on the fly (never whole).
void topk_raw(const TopKArgs& args, const ItemView& items);

// Per-row sorted int64 copy of a CSR exclusion list whose ids are int32 or int64 (IdT).
template <typename IdT>
std::vector<int64_t> sorted_exclusions(const int64_t* indptr, const IdT* ids, int64_t num_rows, int num_threads);

}  // namespace twotower
