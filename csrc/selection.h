// Bounded top-k selection under one total order, shared by every kernel and thread layout:
// higher score first, NaN after every number, then lower item id first.
#pragma once

#include <cmath>
#include <cstdint>

#include "scan.h"

namespace twotower {

// True when (score_a, id_a) ranks before (score_b, id_b).
inline bool ranks_before(float score_a, int64_t id_a, float score_b, int64_t id_b) {
    const bool nan_a = std::isnan(score_a), nan_b = std::isnan(score_b);
    if (nan_a != nan_b) return nan_b;
    if (!nan_a && score_a != score_b) return score_a > score_b;
    return id_a < id_b;
}

// Resets `state` to an empty heap over the given storage and exclusion range.
void init_state(QueryState& state, float* heap_scores, int64_t* heap_ids, int64_t capacity,
                const int64_t* exclude_begin, const int64_t* exclude_end);

// Sorts a state's heap in place into rank order (no allocation: safe inside a parallel region) and
// pads its storage up to k slots with -inf / -1. The storage must hold k entries (the output row).
void finalize_in_place(QueryState& state, int64_t k);

// Writes the k best entries gathered from several states (in rank order) to out_scores/out_ids,
// padding missing slots with -inf / -1.
void merge_ranked(const QueryState* const* parts, int num_parts, int64_t k, float* out_scores, int64_t* out_ids);

}  // namespace twotower
