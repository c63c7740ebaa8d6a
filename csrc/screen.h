// The screening path: an int8 scan gives every score a rigorous lower and upper bound (the codes'
// residuals and every float32 rounding covered); the items whose upper bound reaches the k-th best
// lower bound are the candidates, and float32 rescoring in the float32 kernel's order of operations
// ranks them. No other item can reach the top k, so the answer is the float32 path's (same ids,
// bit-identical scores). Queries whose candidates overflow their list are scanned again in float32.
#pragma once

#include <cstdint>

#include "packing.h"
#include "quantize.h"
#include "topk_args.h"

namespace twotower {

// An item matrix's int8 codes in panels, with their per-lane floats (quantize.h) and statistics.
class CodedItems {
  public:
    CodedItems(const ItemView& items, int num_threads);
    const uint8_t* codes() const { return codes_.data.get(); }
    // The per-lane floats of the panels from `first_panel` on.
    CodePanelFloats floats(int64_t first_panel) const;
    const ItemCodeStats& stats() const { return stats_; }
    int64_t nbytes() const { return codes_.size + floats_.size * static_cast<int64_t>(sizeof(float)); }

  private:
    AlignedArray<uint8_t> codes_;
    AlignedArray<float> floats_;  // scale, residual, span: one run of num_panels * kPanel each
    int64_t lanes_ = 0;
    ItemCodeStats stats_;
};

// Runs the screening path for `args` when it applies (returns false, having written nothing, when
// it does not: too few items for the candidates, D too large, non-finite or huge items). `rows` are
// the float32 items for rescoring; `coded` their codes, or null to code them block by block.
bool screen_topk(const TopKArgs& args, const ItemView& rows, const CodedItems* coded, SearchReport& report);

}  // namespace twotower
