#include "topk.h"

#include <omp.h>

#include <algorithm>

#include "selection.h"

namespace twotower {
namespace {

// Item blocks sized to stay in a core's L2 while every query of the thread streams over them.
constexpr int64_t kBlockBytes = 256 * 1024;
// Below this many queries per thread, threads split the items instead (per-thread heaps, merged).
constexpr int64_t kMinQueriesPerThread = 16;

int64_t panels_per_block(int64_t dim) {
    const int64_t panel_bytes = dim * kPanel * static_cast<int64_t>(sizeof(float));
    const int64_t panels = std::max<int64_t>(2, kBlockBytes / panel_bytes);
    return panels & ~int64_t{1};  // even, for the kernels that take panels in pairs
}

// Where the scan reads panels from: prepacked storage, or a raw matrix packed into a thread's buffer.
struct ItemSource {
    const float* packed;  // null for raw
    ItemView view;
    int64_t num_items;
    int64_t dim;

    const float* block(int64_t first_panel, int64_t count, AlignedFloats& buffer) const {
        if (packed) return packed + first_panel * dim * kPanel;
        pack_panels(view, first_panel, count, buffer.data.get());
        return buffer.data.get();
    }
};

inline const int64_t* excl_begin(const TopKArgs& a, int64_t q) {
    return a.exclude_indptr ? a.exclude_ids + a.exclude_indptr[q] : nullptr;
}
inline const int64_t* excl_end(const TopKArgs& a, int64_t q) {
    return a.exclude_indptr ? a.exclude_ids + a.exclude_indptr[q + 1] : nullptr;
}

// Scans one block of `count` panels starting at panel `first_panel` for queries [q_begin, q_end).
void scan_block(const TopKArgs& a, const ItemSource& src, int64_t q_begin, int64_t q_end, int64_t first_panel,
                int64_t count, const float* panels, QueryState* states) {
    ScanTask task;
    task.queries = a.queries + q_begin * a.query_stride;
    task.query_stride = a.query_stride;
    task.num_queries = q_end - q_begin;
    task.dim = a.dim;
    task.panels = panels;
    task.num_panels = count;
    task.first_item = first_panel * kPanel;
    task.num_items = src.num_items;
    task.states = states;
    a.scan(task);
}

// Scans panels [first_panel, end_panel) block by block for queries [q_begin, q_end).
void scan_range(const TopKArgs& a, const ItemSource& src, int64_t q_begin, int64_t q_end, int64_t first_panel,
                int64_t end_panel, QueryState* states, AlignedFloats& buffer) {
    const int64_t block = panels_per_block(a.dim);
    for (int64_t p = first_panel; p < end_panel; p += block) {
        const int64_t count = std::min(block, end_panel - p);
        scan_block(a, src, q_begin, q_end, p, count, src.block(p, count, buffer), states);
    }
}

// Balanced contiguous split of [0, n) into `parts`; returns the start of part i.
inline int64_t split_point(int64_t n, int parts, int i) { return n * i / parts; }

void run(const TopKArgs& a, const ItemSource& src) {
    const int64_t nq = a.num_queries;
    if (nq == 0) return;
    const int64_t total_panels = num_panels_for(src.num_items);
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.num_threads, std::max<int64_t>(total_panels, 1))));
    const int64_t block_floats = panels_per_block(a.dim) * a.dim * kPanel;
    std::vector<QueryState> states;  // every allocation happens outside the parallel regions

    if (threads == 1 || nq >= kMinQueriesPerThread * threads) {
        // Threads split the queries; each query's heap lives in its output row. A raw item matrix is
        // packed block by block into two shared buffers, each thread packing a share: the implicit
        // barrier after packing block i also proves every thread is done scanning block i - 1, whose
        // buffer block i + 1 reuses.
        const int64_t capacity = std::min(a.k, src.num_items);
        states.resize(nq);
        for (int64_t q = 0; q < nq; ++q)
            init_state(states[q], a.out_scores + q * a.k, a.out_ids + q * a.k, capacity, excl_begin(a, q), excl_end(a, q));
        AlignedFloats shared[2];
        if (!src.packed)
            for (auto& b : shared) b.resize(block_floats);
        const int64_t block = panels_per_block(a.dim);
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num();
            const int64_t q_begin = split_point(nq, threads, t), q_end = split_point(nq, threads, t + 1);
            for (int64_t p = 0, i = 0; p < total_panels; p += block, ++i) {
                const int64_t count = std::min(block, total_panels - p);
                const float* panels;
                if (src.packed) {
                    panels = src.packed + p * a.dim * kPanel;
                } else {
                    float* buffer = shared[i % 2].data.get();
#pragma omp for schedule(static)
                    for (int64_t j = 0; j < count; ++j) pack_panels(src.view, p + j, 1, buffer + j * a.dim * kPanel);
                    panels = buffer;
                }
                if (q_begin < q_end) scan_block(a, src, q_begin, q_end, p, count, panels, states.data() + q_begin);
            }
            for (int64_t q = q_begin; q < q_end; ++q) finalize_in_place(states[q], a.k);
        }
        return;
    }

    // Few queries: threads split the items, each with its own heaps; the heaps are merged at the end.
    std::vector<int64_t> first_panel(threads + 1);
    for (int t = 0; t <= threads; ++t) first_panel[t] = split_point(total_panels, threads, t);
    std::vector<int64_t> capacity(threads), offset(threads + 1, 0);
    for (int t = 0; t < threads; ++t) {
        const int64_t items = std::min(src.num_items, first_panel[t + 1] * kPanel) - first_panel[t] * kPanel;
        capacity[t] = std::min(a.k, std::max<int64_t>(items, 0));
        offset[t + 1] = offset[t] + capacity[t] * nq;
    }
    std::vector<AlignedFloats> buffers(threads);
    if (!src.packed)
        for (auto& b : buffers) b.resize(block_floats);
    std::vector<float> heap_scores(offset[threads]);
    std::vector<int64_t> heap_ids(offset[threads]);
    states.resize(static_cast<size_t>(nq) * threads);
    for (int t = 0; t < threads; ++t)
        for (int64_t q = 0; q < nq; ++q)
            init_state(states[t * nq + q], heap_scores.data() + offset[t] + q * capacity[t],
                       heap_ids.data() + offset[t] + q * capacity[t], capacity[t], excl_begin(a, q), excl_end(a, q));
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num();
        scan_range(a, src, 0, nq, first_panel[t], first_panel[t + 1], states.data() + t * nq, buffers[t]);
    }
    std::vector<const QueryState*> parts(threads);
    for (int64_t q = 0; q < nq; ++q) {
        for (int t = 0; t < threads; ++t) parts[t] = &states[t * nq + q];
        merge_ranked(parts.data(), threads, a.k, a.out_scores + q * a.k, a.out_ids + q * a.k);
    }
}

}  // namespace

PackedItems::PackedItems(const ItemView& items, int num_threads) : num_items_(items.num_items), dim_(items.dim) {
    const int64_t panels = num_panels_for(num_items_);
    panels_.resize(std::max<int64_t>(panels, 1) * dim_ * kPanel);
    float* out = panels_.data.get();
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t p = 0; p < panels; ++p) pack_panels(items, p, 1, out + p * dim_ * kPanel);
}

void topk_packed(const TopKArgs& args, const PackedItems& items) {
    ItemSource src{items.panels(), ItemView{nullptr, items.num_items(), items.dim(), 0, 0}, items.num_items(), items.dim()};
    run(args, src);
}

void topk_raw(const TopKArgs& args, const ItemView& items) {
    ItemSource src{nullptr, items, items.num_items, items.dim};
    run(args, src);
}

template <typename IdT>
std::vector<int64_t> sorted_exclusions(const int64_t* indptr, const IdT* ids, int64_t num_rows, int num_threads) {
    std::vector<int64_t> out(static_cast<size_t>(indptr[num_rows]));
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 256)
    for (int64_t r = 0; r < num_rows; ++r) {
        std::copy(ids + indptr[r], ids + indptr[r + 1], out.begin() + indptr[r]);
        std::sort(out.begin() + indptr[r], out.begin() + indptr[r + 1]);
    }
    return out;
}

template std::vector<int64_t> sorted_exclusions<int32_t>(const int64_t*, const int32_t*, int64_t, int);
template std::vector<int64_t> sorted_exclusions<int64_t>(const int64_t*, const int64_t*, int64_t, int);

}  // namespace twotower
