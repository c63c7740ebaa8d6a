// Exact top-k by inner product with per-query exclusion: the entry points behind the binding.
// The float32 path scans every item (topk.cpp); the screening path (screen.cpp) scans int8 codes,
// then rescores the candidates its bounds leave in float32. No Python in here.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "packing.h"
#include "screen.h"
#include "topk_args.h"

namespace twotower {

// An item matrix stored once for repeated searches: float32 panels, or (screening layout) int8 codes
// for the screening pass plus a row-major float32 copy for rescoring and float32 scans.
class PackedItems {
  public:
    PackedItems(const ItemView& items, int num_threads, bool screening_layout);
    int64_t num_items() const { return num_items_; }
    int64_t dim() const { return dim_; }
    bool screening_layout() const { return coded_ != nullptr; }
    int64_t nbytes() const;
    SearchReport search(const TopKArgs& args) const;

  private:
    int64_t num_items_;
    int64_t dim_;
    AlignedFloats panels_;                 // float32 layout
    AlignedFloats rows_;                   // screening layout: [N, D] row-major
    std::unique_ptr<CodedItems> coded_;    // screening layout
};

// Top-k against a raw item matrix, packed (or coded) block by block on the fly (never whole).
SearchReport topk_raw(const TopKArgs& args, const ItemView& items);

// The float32 scan of every item, for a subset of calls (screen.cpp's fallback uses it too).
void scan_float(const TopKArgs& args, const ItemView& items);

// Per-row sorted int64 copy of a CSR exclusion list whose ids are int32 or int64 (IdT).
template <typename IdT>
std::vector<int64_t> sorted_exclusions(const int64_t* indptr, const IdT* ids, int64_t num_rows, int num_threads);

}  // namespace twotower
