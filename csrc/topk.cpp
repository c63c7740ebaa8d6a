#include "topk.h"

#include <omp.h>

#include <algorithm>

#include "scan_driver.h"

namespace twotower {
namespace {

int64_t panels_per_block(int64_t dim) {
    const int64_t panel_bytes = dim * kPanel * static_cast<int64_t>(sizeof(float));
    const int64_t panels = std::max<int64_t>(2, driver::kBlockBytes / panel_bytes);
    return panels & ~int64_t{1};  // even, for the kernels that take panels in pairs
}

// Float32 panels for run_scan: prepacked, or a raw matrix packed block by block.
struct FloatSource {
    using Block = const float*;
    const TopKArgs& args;
    const float* packed_panels;  // null for raw
    ItemView view;

    int64_t num_items() const { return view.num_items; }
    int64_t block_panels() const { return panels_per_block(view.dim); }
    int64_t buffer_bytes() const { return block_panels() * view.dim * kPanel * static_cast<int64_t>(sizeof(float)); }
    bool packed() const { return packed_panels != nullptr; }
    Block packed_block(int64_t first_panel) const { return packed_panels + first_panel * view.dim * kPanel; }
    Block buffer_block(std::byte* buffer) const { return reinterpret_cast<const float*>(buffer); }
    void pack_panel(int64_t panel, std::byte* buffer, int64_t slot, int) const {
        pack_panels(view, panel, 1, reinterpret_cast<float*>(buffer) + slot * view.dim * kPanel);
    }
    void scan(int64_t q_begin, int64_t q_end, int64_t first_panel, int64_t count, Block panels,
              QueryState* states) const {
        ScanTask task;
        task.queries = args.queries + q_begin * args.query_stride;
        task.query_stride = args.query_stride;
        task.num_queries = q_end - q_begin;
        task.dim = view.dim;
        task.panels = panels;
        task.num_panels = count;
        task.first_item = first_panel * kPanel;
        task.num_items = view.num_items;
        task.states = states;
        args.path.scan(task);
    }
};

ScanOutput output_of(const TopKArgs& a) {
    return ScanOutput{a.num_queries, a.k, a.exclude_indptr, a.exclude_ids, a.num_threads, a.out_scores, a.out_ids};
}

}  // namespace

void scan_float(const TopKArgs& args, const ItemView& items) {
    run_scan(output_of(args), FloatSource{args, nullptr, items});
}

PackedItems::PackedItems(const ItemView& items, int num_threads, bool screening_layout)
    : num_items_(items.num_items), dim_(items.dim) {
    if (screening_layout && dim_ <= kMaxCodeDim) {  // longer rows are never screened: float32 panels
        rows_.resize(std::max<int64_t>(num_items_, 1) * dim_);
        float* out = rows_.data.get();
#pragma omp parallel for num_threads(num_threads) schedule(static)
        for (int64_t i = 0; i < num_items_; ++i)
            for (int64_t d = 0; d < dim_; ++d) out[i * dim_ + d] = items.data[i * items.row_stride + d * items.col_stride];
        coded_ = std::make_unique<CodedItems>(ItemView{out, num_items_, dim_, dim_, 1}, num_threads);
        return;
    }
    const int64_t panels = num_panels_for(num_items_);
    panels_.resize(std::max<int64_t>(panels, 1) * dim_ * kPanel);
    float* out = panels_.data.get();
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t p = 0; p < panels; ++p) pack_panels(items, p, 1, out + p * dim_ * kPanel);
}

int64_t PackedItems::nbytes() const {
    const int64_t floats = (panels_.data ? panels_.size : 0) + (rows_.data ? rows_.size : 0);
    return floats * static_cast<int64_t>(sizeof(float)) + (coded_ ? coded_->nbytes() : 0);
}

SearchReport PackedItems::search(const TopKArgs& args) const {
    SearchReport report;
    if (coded_) {
        const ItemView rows{rows_.data.get(), num_items_, dim_, dim_, 1};
        if (args.path.screen && screen_topk(args, rows, coded_.get(), report)) return report;
        scan_float(args, rows);
        return report;
    }
    run_scan(output_of(args), FloatSource{args, panels_.data.get(), ItemView{nullptr, num_items_, dim_, 0, 0}});
    return report;
}

SearchReport topk_raw(const TopKArgs& args, const ItemView& items) {
    SearchReport report;
    if (args.path.screen && screen_topk(args, items, nullptr, report)) return report;
    scan_float(args, items);
    return report;
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
