// The arguments of one search, shared by the float32 path (topk.cpp) and the screening path
// (screen.cpp): plain structs only.
#pragma once

#include <cstdint>

#include "cpu_features.h"

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
    ScanPath path;
    float* out_scores;           // [num_queries, k]
    int64_t* out_ids;            // [num_queries, k]
};

// What a search did, for tests and benchmarks.
struct SearchReport {
    bool screened = false;         // the int8 screening pass ran
    int64_t fallback_queries = 0;  // queries the screening could not answer: scanned in float32
};

}  // namespace twotower
