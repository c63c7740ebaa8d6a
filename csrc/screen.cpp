#include "screen.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "scan_driver.h"
#include "topk.h"

namespace twotower {
namespace {

constexpr int64_t kMinRawQueries = 128;       // coding a raw matrix on the fly pays off from here
constexpr double kMinScanPerSelection = 4e3;  // see pays_off
constexpr int64_t kMinItems = 16384;           // see pays_off
constexpr int64_t kCandidateBytes = 64 << 20; // candidate lists per chunk of queries
constexpr double kSmallestScale = 0x1p-100;   // below this a query's margin (quantize.cpp) would be huge
constexpr double kHuge = 1e36;                // scores must stay far from float32 overflow

// The bounds (and the float32 scores they bound) stay finite: no NaN or infinity among the items,
// nothing near float32 overflow.
bool bounds_hold(const ItemCodeStats& items, int64_t dim) {
    return items.finite && items.max_abs * 127.0 * static_cast<double>(dim) <= kHuge;
}

// Screening halves the scan (N * D multiply-adds per query) but doubles the selection work
// (~k * ln(N / k) offers per query) and adds per-call work (coding the queries, rescoring). Measured
// on this project's 2-core Zen 4, B = 1024-2048 (time against the float32 scan; in brackets
// N * D / (k ln(N / k))): Gaussian 1M x 64, k = 100: 0.5x (69k); trained 20k x 64 item vectors,
// k = 10 / 50 / 100: 0.67x (17k) / 0.76x (4.3k) / 0.92x (2.4k); Gaussian 20k x 64, same k: 0.79x /
// 0.88x / 1.04x; Gaussian 20k x 16, k = 10: 1.07x (4.2k); 50k x 128, k = 100: 1.06x (10k); trained
// 5k x 64: 0.92-1.14x; 2k x 64: 1.3-2.5x. Hence: at least 16384 items and N * D >= 4e3 * k ln(N / k).
// A raw matrix must also be coded on the fly: worth it from 128 queries.
bool pays_off(const TopKArgs& a, const ItemView& rows, bool coded) {
    if (!coded && a.num_queries < kMinRawQueries) return false;
    const double n = static_cast<double>(rows.num_items), k = static_cast<double>(a.k);
    if (rows.num_items < kMinItems || n <= 2.0 * k) return false;
    return n * static_cast<double>(rows.dim) >= kMinScanPerSelection * k * std::log(n / k);
}

int64_t code_block_panels(int64_t dim) { return std::max<int64_t>(1, driver::kBlockBytes / code_panel_bytes(dim)); }

// Int8 panels for run_scan: coded in advance, or coded block by block from a raw matrix (each
// thread collecting the statistics of what it coded). A raw block buffer holds the block's codes,
// then its scale, residual and span runs.
struct CodeSource {
    struct Block {
        const uint8_t* codes;
        CodePanelFloats floats;
    };
    const QueryCodes& queries;
    ItemView view;
    const CodedItems* coded;                   // null for raw
    std::vector<ItemCodeStats>* thread_stats;  // raw only, one per thread

    int64_t num_items() const { return view.num_items; }
    int64_t block_panels() const { return code_block_panels(view.dim); }
    int64_t panel_bytes() const { return code_panel_bytes(view.dim); }
    int64_t buffer_bytes() const {
        return block_panels() * (panel_bytes() + 3 * kPanel * static_cast<int64_t>(sizeof(float)));
    }
    bool packed() const { return coded != nullptr; }
    Block packed_block(int64_t first_panel) const {
        return {coded->codes() + first_panel * panel_bytes(), coded->floats(first_panel)};
    }
    Block buffer_block(std::byte* buffer) const {
        float* floats = reinterpret_cast<float*>(buffer + block_panels() * panel_bytes());
        const int64_t lanes = block_panels() * kPanel;
        return {reinterpret_cast<const uint8_t*>(buffer), CodePanelFloats{floats, floats + lanes, floats + 2 * lanes}};
    }
    void pack_panel(int64_t panel, std::byte* buffer, int64_t slot, int thread) const {
        const Block block = buffer_block(buffer);
        const int64_t at = slot * kPanel;
        quantize_panels(view, panel, 1, const_cast<uint8_t*>(block.codes) + slot * panel_bytes(),
                        CodePanelFloats{block.floats.scale + at, block.floats.residual + at, block.floats.span + at},
                        (*thread_stats)[thread]);
    }
    void scan(int64_t q_begin, int64_t q_end, int64_t first_panel, int64_t count, const Block& block,
              QueryState* states) const {
        const int64_t padded = padded_dim(view.dim);
        CodeScanTask task;
        task.queries = queries.codes.data() + q_begin * padded;
        task.offsets = queries.offset.data() + q_begin;
        task.code_norms = queries.unit_code_norm.data() + q_begin;
        task.residuals = queries.unit_residual.data() + q_begin;
        task.margins = queries.unit_margin.data() + q_begin;
        task.num_queries = q_end - q_begin;
        task.dim = padded;
        task.panels = block.codes;
        task.item_scales = block.floats.scale;
        task.item_residuals = block.floats.residual;
        task.item_spans = block.floats.span;
        task.num_panels = count;
        task.first_item = first_panel * kPanel;
        task.num_items = view.num_items;
        task.states = states;
        scan_codes_avx512_vnni(task);
    }
};

#if defined(TWOTOWER_X86)
// Rescores the candidates of query q whose upper bound reaches the k-th best lower bound of all of
// them and writes its top k. False when the screening cannot answer the query (the float32 scan must).
// `ids`, `upper`, `lower`, `rescored` and `order` are scratch of the candidates' total capacity.
bool finish_query(const TopKArgs& a, const ItemView& rows, const QueryCodes& qc, const ItemCodeStats& items,
                  const ScanCandidates& candidates, int64_t q, int64_t* ids, float* upper, float* lower,
                  float* rescored, int64_t* order) {
    if (!qc.finite[q] || !(qc.scale[q] > kSmallestScale) || !std::isfinite(qc.unit_margin[q]) ||
        qc.max_abs[q] * items.max_abs * static_cast<double>(rows.dim) > kHuge)
        return false;
    const int64_t nq = a.num_queries;
    int64_t listed = 0;
    for (int part = 0; part < candidates.parts; ++part) {
        const int64_t list = part * nq + q, at = list * candidates.capacity, n = candidates.count[list];
        if (candidates.overflowed[list]) return false;
        std::copy(candidates.upper.begin() + at, candidates.upper.begin() + at + n, upper + listed);
        std::copy(candidates.lower.begin() + at, candidates.lower.begin() + at + n, lower + listed);
        std::copy(candidates.ids.begin() + at, candidates.ids.begin() + at + n, ids + listed);
        listed += n;
    }
    int64_t count = listed;
    if (listed > a.k) {  // keep the items whose upper bound reaches the k-th best lower bound
        std::copy(lower, lower + listed, rescored);
        std::nth_element(rescored, rescored + (listed - a.k), rescored + listed);
        const float threshold = rescored[listed - a.k];
        count = 0;
        for (int64_t i = 0; i < listed; ++i)
            if (upper[i] >= threshold) ids[count++] = ids[i];
    }
    rescore_avx512_vnni(a.queries + q * a.query_stride, rows.data, rows.row_stride, rows.col_stride, rows.dim, ids,
                        count, rescored);
    std::iota(order, order + count, int64_t{0});
    const int64_t keep = std::min(a.k, count);
    std::partial_sort(order, order + keep, order + count, [&](int64_t i, int64_t j) {
        return ranks_before(rescored[i], ids[i], rescored[j], ids[j]);
    });
    float* out_scores = a.out_scores + q * a.k;
    int64_t* out_ids = a.out_ids + q * a.k;
    for (int64_t i = 0; i < keep; ++i) {
        out_scores[i] = rescored[order[i]];
        out_ids[i] = ids[order[i]];
    }
    for (int64_t i = keep; i < a.k; ++i) {
        out_scores[i] = -std::numeric_limits<float>::infinity();
        out_ids[i] = -1;
    }
    return true;
}
#endif

// Scans the listed queries again in float32 and writes their rows of the output.
void rescan_in_float(const TopKArgs& a, const ItemView& rows, const std::vector<int64_t>& queries) {
    const int64_t n = static_cast<int64_t>(queries.size()), dim = a.dim;
    std::vector<float> query_rows(n * dim), scores(n * a.k);
    std::vector<int64_t> ids(n * a.k), indptr(n + 1, 0), excluded;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t q = queries[i];
        std::copy(a.queries + q * a.query_stride, a.queries + q * a.query_stride + dim, query_rows.begin() + i * dim);
        if (a.exclude_indptr)
            excluded.insert(excluded.end(), a.exclude_ids + a.exclude_indptr[q], a.exclude_ids + a.exclude_indptr[q + 1]);
        indptr[i + 1] = static_cast<int64_t>(excluded.size());
    }
    TopKArgs sub = a;
    sub.queries = query_rows.data();
    sub.num_queries = n;
    sub.query_stride = dim;
    sub.exclude_indptr = a.exclude_indptr ? indptr.data() : nullptr;
    sub.exclude_ids = a.exclude_indptr ? excluded.data() : nullptr;
    sub.out_scores = scores.data();
    sub.out_ids = ids.data();
    scan_float(sub, rows);
    for (int64_t i = 0; i < n; ++i) {
        std::copy(scores.begin() + i * a.k, scores.begin() + (i + 1) * a.k, a.out_scores + queries[i] * a.k);
        std::copy(ids.begin() + i * a.k, ids.begin() + (i + 1) * a.k, a.out_ids + queries[i] * a.k);
    }
}

#if defined(TWOTOWER_X86)
// Screens one chunk of queries (all of `a`), rescans in float32 the ones it cannot answer.
void screen_chunk(const TopKArgs& a, const ItemView& rows, const CodedItems* coded, SearchReport& report) {
    const int64_t nq = a.num_queries;
    QueryCodes qc;
    quantize_queries(a.queries, nq, a.query_stride, rows.dim, a.num_threads, qc);
    ScanCandidates candidates;  // the scan keeps candidate lists only (no heaps, no output)
    candidates.capacity = 3 * a.k + 256;
    std::vector<ItemCodeStats> thread_stats(std::max(a.num_threads, 1));
    const ScanOutput out{nq, a.k, a.exclude_indptr, a.exclude_ids, a.num_threads, nullptr, nullptr};
    run_scan(out, CodeSource{qc, rows, coded, &thread_stats}, &candidates);
    ItemCodeStats items;
    if (coded) {
        items = coded->stats();
    } else {
        for (const auto& s : thread_stats) items.merge(s);
    }
    std::vector<int64_t> failed;
    if (!bounds_hold(items, rows.dim)) {
        failed.resize(nq);
        std::iota(failed.begin(), failed.end(), int64_t{0});
    } else {
        const int threads = std::max(a.num_threads, 1);
        const int64_t most = candidates.parts * candidates.capacity;
        std::vector<float> upper(threads * most), lower(threads * most), rescored(threads * most);
        std::vector<int64_t> ids(threads * most), order(threads * most);
        std::vector<uint8_t> ok(nq);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
        for (int64_t q = 0; q < nq; ++q) {
            const int64_t t = omp_get_thread_num() * most;
            ok[q] = finish_query(a, rows, qc, items, candidates, q, ids.data() + t, upper.data() + t, lower.data() + t,
                                 rescored.data() + t, order.data() + t);
        }
        for (int64_t q = 0; q < nq; ++q)
            if (!ok[q]) failed.push_back(q);
    }
    report.fallback_queries += static_cast<int64_t>(failed.size());
    if (!failed.empty()) rescan_in_float(a, rows, failed);
}
#endif

}  // namespace

CodedItems::CodedItems(const ItemView& items, int num_threads) {
    if (items.dim > kMaxCodeDim)
        throw std::invalid_argument("rows of " + std::to_string(items.dim) + " values are too long for int8 codes (at most " +
                                    std::to_string(kMaxCodeDim) + ")");
    const int64_t panels = std::max<int64_t>(num_panels_for(items.num_items), 1);
    const int64_t panel_bytes = code_panel_bytes(items.dim);
    lanes_ = panels * kPanel;
    codes_.resize(panels * panel_bytes);
    floats_.resize(3 * lanes_);
    std::vector<ItemCodeStats> stats(std::max(num_threads, 1));
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t p = 0; p < num_panels_for(items.num_items); ++p)
        quantize_panels(items, p, 1, codes_.data.get() + p * panel_bytes, floats(p), stats[omp_get_thread_num()]);
    for (const auto& s : stats) stats_.merge(s);
}

CodePanelFloats CodedItems::floats(int64_t first_panel) const {
    float* base = floats_.data.get() + first_panel * kPanel;
    return CodePanelFloats{base, base + lanes_, base + 2 * lanes_};
}

bool screen_topk(const TopKArgs& a, const ItemView& rows, const CodedItems* coded, SearchReport& report) {
#if defined(TWOTOWER_X86)
    const int64_t nq = a.num_queries;
    if (nq == 0 || rows.num_items == 0 || rows.dim > kMaxCodeDim) return false;
    if (coded && !bounds_hold(coded->stats(), rows.dim)) return false;
    if (!a.path.forced && !pays_off(a, rows, coded != nullptr)) return false;
    report.screened = true;
    // Chunks of queries bound the candidate lists' memory (16 bytes per entry, 3k + 256 per query);
    // each chunk streams the items again, which costs little next to scoring them.
    const int64_t per_query = 16 * (3 * a.k + 256);
    const int64_t chunk = std::max<int64_t>(256, kCandidateBytes / per_query);
    for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
        TopKArgs sub = a;
        sub.num_queries = std::min(chunk, nq - q0);
        sub.queries = a.queries + q0 * a.query_stride;
        sub.exclude_indptr = a.exclude_indptr ? a.exclude_indptr + q0 : nullptr;  // offsets stay absolute
        sub.out_scores = a.out_scores + q0 * a.k;
        sub.out_ids = a.out_ids + q0 * a.k;
        screen_chunk(sub, rows, coded, report);
    }
    return true;
#else
    (void)a, (void)rows, (void)coded, (void)report;
    return false;
#endif
}

}  // namespace twotower
