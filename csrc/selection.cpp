#include "selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace twotower {
namespace {

constexpr uint32_t kAllLanes = (1u << kPanel) - 1u;

// The heap keeps its worst entry at the root: parent ranks after (or equal to) its children.
void sift_down(QueryState& s, int64_t pos) {
    const float score = s.heap_scores[pos];
    const int64_t id = s.heap_ids[pos];
    for (;;) {
        int64_t child = 2 * pos + 1;
        if (child >= s.size) break;
        if (child + 1 < s.size &&
            ranks_before(s.heap_scores[child], s.heap_ids[child], s.heap_scores[child + 1], s.heap_ids[child + 1]))
            ++child;
        if (!ranks_before(score, id, s.heap_scores[child], s.heap_ids[child])) break;
        s.heap_scores[pos] = s.heap_scores[child];
        s.heap_ids[pos] = s.heap_ids[child];
        pos = child;
    }
    s.heap_scores[pos] = score;
    s.heap_ids[pos] = id;
}

void sift_up(QueryState& s, int64_t pos) {
    const float score = s.heap_scores[pos];
    const int64_t id = s.heap_ids[pos];
    while (pos > 0) {
        const int64_t parent = (pos - 1) / 2;
        if (!ranks_before(s.heap_scores[parent], s.heap_ids[parent], score, id)) break;
        s.heap_scores[pos] = s.heap_scores[parent];
        s.heap_ids[pos] = s.heap_ids[parent];
        pos = parent;
    }
    s.heap_scores[pos] = score;
    s.heap_ids[pos] = id;
}

void refresh_threshold(QueryState& s) {
    if (s.size < s.capacity || std::isnan(s.heap_scores[0])) {
        s.accept_all = kAllLanes;
        s.threshold = -std::numeric_limits<float>::infinity();
    } else {
        s.accept_all = 0;
        s.threshold = s.heap_scores[0];
    }
}

inline bool is_excluded(const QueryState& s, int64_t id) {
    return s.exclude_begin != s.exclude_end && std::binary_search(s.exclude_begin, s.exclude_end, id);
}

}  // namespace

void init_state(QueryState& state, float* heap_scores, int64_t* heap_ids, int64_t capacity,
                const int64_t* exclude_begin, const int64_t* exclude_end) {
    state.heap_scores = heap_scores;
    state.heap_ids = heap_ids;
    state.size = 0;
    state.capacity = capacity;
    state.exclude_begin = exclude_begin;
    state.exclude_end = exclude_end;
    state.candidate_upper = nullptr;
    state.candidate_lower = nullptr;
    state.candidate_ids = nullptr;
    state.candidate_scratch = nullptr;
    state.candidate_count = 0;
    state.candidate_limit = 0;
    state.candidate_capacity = 0;
    state.candidates_overflowed = false;
    refresh_threshold(state);
    if (capacity == 0) {  // nothing can ever enter: let the scan skip every lane
        state.accept_all = 0;
        state.threshold = std::numeric_limits<float>::quiet_NaN();
    }
}

void offer_panel(QueryState& s, const float* scores, uint32_t mask, int64_t first_id, int64_t num_items) {
    if (s.capacity == 0) return;
    while (mask) {
        const int lane = __builtin_ctz(mask);
        mask &= mask - 1;
        const int64_t id = first_id + lane;
        if (id >= num_items) break;  // lanes are visited in id order; the rest is padding
        const float score = scores[lane];
        if (s.size < s.capacity) {
            if (is_excluded(s, id)) continue;
            s.heap_scores[s.size] = score;
            s.heap_ids[s.size] = id;
            sift_up(s, s.size++);
        } else {
            if (!ranks_before(score, id, s.heap_scores[0], s.heap_ids[0]) || is_excluded(s, id)) continue;
            s.heap_scores[0] = score;
            s.heap_ids[0] = id;
            sift_down(s, 0);
        }
        refresh_threshold(s);
    }
}

#if defined(TWOTOWER_X86)  // the screening scan exists only there
// Raises the threshold to the k-th best lower bound among the candidates (k: the state's capacity)
// and drops the candidates whose upper bound falls below it. Every item whose lower bound reaches
// the threshold is still listed, so the threshold is the k-th best lower bound of all items seen.
// The next compaction comes when the list has grown by half (the threshold rises fastest early in
// the scan, and a stale one lets more items in). A list that stays more than 3/4 full marks the
// query as overflowed and stops its scan (the float32 scan answers it instead).
void compact_candidates(QueryState& s) {
    const int64_t n = s.candidate_count, k = s.capacity;  // n >= limit >= 2k
    const float threshold = kth_largest_avx512_vnni(s.candidate_lower, n, k, s.candidate_scratch);
    if (s.accept_all || threshold > s.threshold) {
        s.threshold = threshold;
        s.accept_all = 0;
    }
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (s.candidate_upper[i] >= s.threshold) {
            s.candidate_upper[kept] = s.candidate_upper[i];
            s.candidate_lower[kept] = s.candidate_lower[i];
            s.candidate_ids[kept++] = s.candidate_ids[i];
        }
    }
    s.candidate_count = kept;
    s.candidate_limit = std::min(s.candidate_capacity, std::max(2 * k, kept + kept / 2));
    if (kept > s.candidate_capacity / 4 * 3) {
        s.candidates_overflowed = true;
        s.accept_all = 0;
        s.threshold = std::numeric_limits<float>::quiet_NaN();  // no lane compares above it
    }
}

void offer_bounds(QueryState& s, const float* lower, const float* upper, uint32_t mask, int64_t first_id,
                  int64_t num_items) {
    if (s.capacity == 0 || s.candidates_overflowed) return;
    while (mask) {
        const int lane = __builtin_ctz(mask);
        mask &= mask - 1;
        const int64_t id = first_id + lane;
        if (id >= num_items) break;  // lanes are visited in id order; the rest is padding
        if (!s.accept_all && !(upper[lane] >= s.threshold)) continue;  // the threshold rose within this panel
        if (is_excluded(s, id)) continue;
        if (s.candidate_count >= s.candidate_limit) {
            compact_candidates(s);
            if (s.candidates_overflowed) return;
            if (!(upper[lane] >= s.threshold)) continue;
        }
        s.candidate_upper[s.candidate_count] = upper[lane];
        s.candidate_lower[s.candidate_count] = lower[lane];
        s.candidate_ids[s.candidate_count++] = id;
    }
}

#endif

void finalize_in_place(QueryState& s, int64_t k) {
    const int64_t count = s.size;
    // Heap sort: moving the worst entry to the end each time leaves the array best-first.
    while (s.size > 1) {
        const int64_t last = s.size - 1;
        std::swap(s.heap_scores[0], s.heap_scores[last]);
        std::swap(s.heap_ids[0], s.heap_ids[last]);
        s.size = last;
        sift_down(s, 0);
    }
    s.size = count;
    for (int64_t i = count; i < k; ++i) {
        s.heap_scores[i] = -std::numeric_limits<float>::infinity();
        s.heap_ids[i] = -1;
    }
}

void merge_ranked(const QueryState* const* parts, int num_parts, int64_t k, float* out_scores, int64_t* out_ids) {
    std::vector<std::pair<float, int64_t>> entries;
    for (int p = 0; p < num_parts; ++p)
        for (int64_t i = 0; i < parts[p]->size; ++i)
            entries.emplace_back(parts[p]->heap_scores[i], parts[p]->heap_ids[i]);
    const auto before = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
        return ranks_before(a.first, a.second, b.first, b.second);
    };
    const int64_t keep = std::min<int64_t>(k, static_cast<int64_t>(entries.size()));
    std::partial_sort(entries.begin(), entries.begin() + keep, entries.end(), before);
    for (int64_t i = 0; i < keep; ++i) {
        out_scores[i] = entries[i].first;
        out_ids[i] = entries[i].second;
    }
    for (int64_t i = keep; i < k; ++i) {
        out_scores[i] = -std::numeric_limits<float>::infinity();
        out_ids[i] = -1;
    }
}

}  // namespace twotower
