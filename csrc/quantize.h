// Int8 codes for the screening pass (screen.cpp): every item and query row is stored as
// scale * code + residual with integer codes in [-127, 127], one scale per row. Alongside the codes
// each row keeps the norms that bound how far a code's dot product can be from the float32 one.
#pragma once

#include <cstdint>
#include <vector>

#include "packing.h"
#include "scan.h"

namespace twotower {

// Rows longer than this are not coded (screen.cpp scans them in float32): int32 accumulators of
// 255 * 127 * D cannot overflow, and a row's codes fit on the stack.
constexpr int64_t kMaxCodeDim = 16384;
// The VNNI dot product consumes 4 bytes per lane per step: dims are padded to a multiple of 4.
constexpr int kGroup = 4;
inline int64_t padded_dim(int64_t dim) { return (dim + kGroup - 1) / kGroup * kGroup; }
// Bytes of one item panel of codes: panel[g * kPanel * kGroup + lane * kGroup + j] = code of dim
// g * kGroup + j of item lane, stored as code + 128 (the unsigned operand of the VNNI product).
inline int64_t code_panel_bytes(int64_t dim) { return padded_dim(dim) * kPanel; }

// For one row x = scale * code + residual:
//   code_norm = ||scale * code||,  residual_norm = ||x - scale * code||  (both computed in double).
// Maxima over a set of items; `finite` is false if any item had a NaN or infinite entry.
struct ItemCodeStats {
    double max_code_norm = 0.0;
    double max_residual_norm = 0.0;
    double max_abs = 0.0;  // largest |x| of any entry
    bool finite = true;
    void merge(const ItemCodeStats& other);
};

// Per-lane floats of a run of code panels (count * kPanel each; padding lanes get 0):
//   scale, residual = ||x - scale * code|| and span = residual + ||scale * code||, the last two
//   rounded up so that the screening bound computed from them stays an upper bound.
struct CodePanelFloats {
    float* scale;
    float* residual;
    float* span;
};

// Quantizes panels [first_panel, first_panel + count) of `items` into `codes`
// (count * code_panel_bytes(dim) bytes) and `floats`, folding each item into `stats`.
void quantize_panels(const ItemView& items, int64_t first_panel, int64_t count, uint8_t* codes,
                     const CodePanelFloats& floats, ItemCodeStats& stats);

// Query codes, row q at codes + q * padded_dim(dim) (signed, zero-padded), with per-row data.
// The screening kernel reads offset, unit_code_norm, unit_residual and unit_margin.
struct QueryCodes {
    int64_t dim = 0;
    std::vector<int8_t> codes;
    std::vector<int32_t> offset;         // -128 * sum(code): undoes the +128 of the item codes
    std::vector<float> unit_code_norm;   // ||code||, rounded up
    std::vector<float> unit_residual;    // ||q - scale * code|| / scale plus the rounding allowance, rounded up
    std::vector<float> unit_margin;      // the bounds' allowance for float32 underflow, rounded up
    std::vector<float> scale;
    std::vector<double> code_norm, residual_norm, max_abs;  // ||scale * code||, ||q - scale * code||, max |q|
    std::vector<uint8_t> finite;
};

// The smallest float >= x.
float round_up(double x);

void quantize_queries(const float* queries, int64_t num_queries, int64_t stride, int64_t dim, int num_threads,
                      QueryCodes& out);

}  // namespace twotower
