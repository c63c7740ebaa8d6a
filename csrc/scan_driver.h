// How a scan is spread over threads and item blocks, shared by the float32 scan (topk.cpp) and the
// int8 screening scan (screen.cpp). A Source supplies panels and scans them:
//   int64_t num_items() const;  int64_t block_panels() const;  int64_t buffer_bytes() const;
//   bool packed() const;
//   Block packed_block(int64_t first_panel) const;           // panels stored in advance
//   Block buffer_block(std::byte* buffer) const;              // panels packed into `buffer`
//   void pack_panel(int64_t panel, std::byte* buffer, int64_t slot, int thread) const;
//   void scan(int64_t q_begin, int64_t q_end, int64_t first_panel, int64_t count, const Block& block,
//             QueryState* states) const;
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "packing.h"
#include "selection.h"

namespace twotower {

// Where the k best of each query go, and what each query must skip.
struct ScanOutput {
    int64_t num_queries;
    int64_t k;
    const int64_t* exclude_indptr;  // [num_queries + 1] or null
    const int64_t* exclude_ids;     // sorted within each row
    int num_threads;
    float* scores;                  // [num_queries, k], best first, padded with -inf; null when only
    int64_t* ids;                   // candidate lists are wanted (the screening scan), else [num_queries, k]
};

// The screening scan's candidate lists, one per query and part (a part is a thread's share of the
// items when threads split the items; there is one part when they split the queries). Filled by
// run_scan when `capacity` > 0; list (part, q) is entry part * num_queries + q.
struct ScanCandidates {
    int64_t capacity = 0;
    int parts = 0;
    std::vector<float> upper, lower;
    std::vector<int64_t> ids;
    std::vector<int64_t> count;
    std::vector<uint8_t> overflowed;
    std::vector<uint32_t> scratch;  // one list's worth per thread

    void prepare(int num_parts, int64_t num_queries, int threads) {
        parts = num_parts;
        upper.resize(static_cast<size_t>(num_parts * num_queries * capacity));
        lower.resize(upper.size());
        ids.resize(upper.size());
        count.assign(static_cast<size_t>(num_parts * num_queries), 0);
        overflowed.assign(count.size(), 0);
        scratch.resize(static_cast<size_t>(threads * capacity));
    }
    void attach(QueryState& state, int64_t list) {
        state.candidate_upper = upper.data() + list * capacity;
        state.candidate_lower = lower.data() + list * capacity;
        state.candidate_ids = ids.data() + list * capacity;
        state.candidate_capacity = capacity;
        state.candidate_limit = std::min(capacity, std::max<int64_t>(2 * state.capacity, 1));
    }
    // Compaction scratch of the thread that scans the list (states are never shared by threads).
    void lend_scratch(QueryState& state, int thread) { state.candidate_scratch = scratch.data() + thread * capacity; }
    void collect(const QueryState& state, int64_t list) {
        count[list] = state.candidate_count;
        overflowed[list] = state.candidates_overflowed;
    }
};

namespace driver {

// Item blocks sized to stay in a core's L2 while every query of a thread streams over them.
constexpr int64_t kBlockBytes = 256 * 1024;
// Below this many queries per thread, threads split the items instead (per-thread heaps, merged).
constexpr int64_t kMinQueriesPerThread = 16;

inline const int64_t* excl_begin(const ScanOutput& a, int64_t q) {
    return a.exclude_indptr ? a.exclude_ids + a.exclude_indptr[q] : nullptr;
}
inline const int64_t* excl_end(const ScanOutput& a, int64_t q) {
    return a.exclude_indptr ? a.exclude_ids + a.exclude_indptr[q + 1] : nullptr;
}
// Balanced contiguous split of [0, n) into `parts`; returns the start of part i.
inline int64_t split_point(int64_t n, int parts, int i) { return n * i / parts; }

}  // namespace driver

// Threads the source can use: never more than there are panels.
template <class Source>
int scan_threads(const ScanOutput& a, const Source& src) {
    const int64_t panels = num_panels_for(src.num_items());
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, std::max<int64_t>(panels, 1))));
}

template <class Source>
void run_scan(const ScanOutput& a, const Source& src, ScanCandidates* candidates = nullptr) {
    using namespace driver;
    const int64_t nq = a.num_queries;
    if (nq == 0) return;
    const int64_t total_panels = num_panels_for(src.num_items());
    const int threads = scan_threads(a, src);
    const int64_t block = src.block_panels();
    std::vector<QueryState> states;  // every allocation happens outside the parallel regions

    if (threads == 1 || nq >= kMinQueriesPerThread * threads) {
        // Threads split the queries; each query's heap lives in its output row. A raw item matrix is
        // packed block by block into two shared buffers, each thread packing a share: the implicit
        // barrier after packing block i also proves every thread is done scanning block i - 1, whose
        // buffer block i + 1 reuses.
        const int64_t capacity = std::min(a.k, src.num_items());
        states.resize(nq);
        if (candidates) candidates->prepare(1, nq, threads);
        for (int64_t q = 0; q < nq; ++q) {
            init_state(states[q], a.scores ? a.scores + q * a.k : nullptr, a.ids ? a.ids + q * a.k : nullptr, capacity,
                       excl_begin(a, q), excl_end(a, q));
            if (candidates) candidates->attach(states[q], q);
        }
        AlignedArray<std::byte> shared[2];
        if (!src.packed())
            for (auto& b : shared) b.resize(src.buffer_bytes());
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num();
            const int64_t q_begin = split_point(nq, threads, t), q_end = split_point(nq, threads, t + 1);
            if (candidates)
                for (int64_t q = q_begin; q < q_end; ++q) candidates->lend_scratch(states[q], t);
            for (int64_t p = 0, i = 0; p < total_panels; p += block, ++i) {
                const int64_t count = std::min(block, total_panels - p);
                if (src.packed()) {
                    if (q_begin < q_end) src.scan(q_begin, q_end, p, count, src.packed_block(p), states.data() + q_begin);
                } else {
                    std::byte* buffer = shared[i % 2].data.get();
#pragma omp for schedule(static)
                    for (int64_t j = 0; j < count; ++j) src.pack_panel(p + j, buffer, j, t);
                    if (q_begin < q_end) src.scan(q_begin, q_end, p, count, src.buffer_block(buffer), states.data() + q_begin);
                }
            }
            if (a.scores)
                for (int64_t q = q_begin; q < q_end; ++q) finalize_in_place(states[q], a.k);
        }
        if (candidates)
            for (int64_t q = 0; q < nq; ++q) candidates->collect(states[q], q);
        return;
    }

    // Few queries: threads split the items, each with its own heaps; the heaps are merged at the end.
    std::vector<int64_t> first_panel(threads + 1);
    for (int t = 0; t <= threads; ++t) first_panel[t] = split_point(total_panels, threads, t);
    std::vector<int64_t> capacity(threads), offset(threads + 1, 0);
    for (int t = 0; t < threads; ++t) {
        const int64_t items = std::min(src.num_items(), first_panel[t + 1] * kPanel) - first_panel[t] * kPanel;
        capacity[t] = std::min(a.k, std::max<int64_t>(items, 0));
        offset[t + 1] = offset[t] + capacity[t] * nq;
    }
    std::vector<AlignedArray<std::byte>> buffers(threads);
    if (!src.packed())
        for (auto& b : buffers) b.resize(src.buffer_bytes());
    std::vector<float> heap_scores(offset[threads]);
    std::vector<int64_t> heap_ids(offset[threads]);
    states.resize(static_cast<size_t>(nq) * threads);
    if (candidates) candidates->prepare(threads, nq, threads);
    for (int t = 0; t < threads; ++t)
        for (int64_t q = 0; q < nq; ++q) {
            init_state(states[t * nq + q], heap_scores.data() + offset[t] + q * capacity[t],
                       heap_ids.data() + offset[t] + q * capacity[t], capacity[t], excl_begin(a, q), excl_end(a, q));
            if (candidates) candidates->attach(states[t * nq + q], t * nq + q);
        }
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num();
        QueryState* mine = states.data() + t * nq;
        if (candidates)
            for (int64_t q = 0; q < nq; ++q) candidates->lend_scratch(mine[q], t);
        for (int64_t p = first_panel[t]; p < first_panel[t + 1]; p += block) {
            const int64_t count = std::min(block, first_panel[t + 1] - p);
            if (src.packed()) {
                src.scan(0, nq, p, count, src.packed_block(p), mine);
            } else {
                std::byte* buffer = buffers[t].data.get();
                for (int64_t j = 0; j < count; ++j) src.pack_panel(p + j, buffer, j, t);
                src.scan(0, nq, p, count, src.buffer_block(buffer), mine);
            }
        }
    }
    if (candidates)
        for (int64_t list = 0; list < nq * threads; ++list) candidates->collect(states[list], list);
    if (!a.scores) return;
    std::vector<const QueryState*> parts(threads);
    for (int64_t q = 0; q < nq; ++q) {
        for (int t = 0; t < threads; ++t) parts[t] = &states[t * nq + q];
        merge_ranked(parts.data(), threads, a.k, a.scores + q * a.k, a.ids + q * a.k);
    }
}

}  // namespace twotower
