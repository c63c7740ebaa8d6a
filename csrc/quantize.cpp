#include "quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace twotower {
namespace {

constexpr float kMaxCode = 127.0f;
constexpr double kUnit = 0x1p-24;             // float32 unit roundoff
constexpr double kSmallestNormal = 0x1p-126;  // float32: below this, roundings (or flushes) are absolute

// Codes one row (element stride `stride`) into codes[0, dim). The codes may be rounded any way: the
// norms are computed from what was stored, in double (four partial sums, so that the loop does not
// wait on one chain of additions).
RowCode code_row(const float* row, int64_t stride, int64_t dim, int8_t* codes) {
    RowCode r{};
    r.finite = true;
    // max |x| through the bits: for finite floats the order of |x| is the order of their bits, and
    // NaN or infinity has the largest exponent.
    uint32_t max_bits = 0;
    for (int64_t d = 0; d < dim; ++d) {
        uint32_t bits;
        std::memcpy(&bits, row + d * stride, sizeof(bits));
        bits &= 0x7fffffffu;
        max_bits = bits > max_bits ? bits : max_bits;
    }
    float max_abs;
    std::memcpy(&max_abs, &max_bits, sizeof(max_abs));
    if (max_bits >= 0x7f800000u || max_bits == 0) {
        std::memset(codes, 0, static_cast<size_t>(dim));
        r.finite = max_bits < 0x7f800000u;
        if (!r.finite) r.max_abs = INFINITY;
        return r;
    }
    r.scale = max_abs / kMaxCode;
    const double scale = r.scale, inverse = kMaxCode / static_cast<double>(max_abs);
    double code_sq[4] = {0, 0, 0, 0}, residual_sq[4] = {0, 0, 0, 0};
    const auto code_one = [&](double x, int8_t& out, double& code_acc, double& residual_acc) {
        const double v = x * inverse;  // |v| <= 127 (a hair above, at most): rounded half away from zero
        const int c = std::min(127, std::max(-127, static_cast<int>(v + std::copysign(0.5, v))));  // no branch
        out = static_cast<int8_t>(c);
        const double coded = scale * c;     // exact in double
        const double residual = x - coded;  // exact in double
        code_acc += coded * coded;
        residual_acc += residual * residual;
    };
    int64_t d = 0;
    for (; d + 4 <= dim; d += 4)
        for (int lane = 0; lane < 4; ++lane) code_one(row[(d + lane) * stride], codes[d + lane], code_sq[lane], residual_sq[lane]);
    for (; d < dim; ++d) code_one(row[d * stride], codes[d], code_sq[0], residual_sq[0]);
    r.code_norm = std::sqrt((code_sq[0] + code_sq[1]) + (code_sq[2] + code_sq[3]));
    r.residual_norm = std::sqrt((residual_sq[0] + residual_sq[1]) + (residual_sq[2] + residual_sq[3]));
    r.max_abs = max_abs;
    return r;
}

// The AVX-512 coder where it applies (contiguous rows on a CPU that screens), else the portable one.
RowCode code_any_row(const float* row, int64_t stride, int64_t dim, int8_t* codes) {
#if defined(TWOTOWER_X86)
    RowCode r;
    if (stride == 1 && code_row_avx512_vnni(row, dim, codes, r)) return r;
#endif
    return code_row(row, stride, dim, codes);
}

}  // namespace

float round_up(double x) {
    float f = static_cast<float>(x);
    if (static_cast<double>(f) < x) f = std::nextafter(f, INFINITY);
    return f;
}

void ItemCodeStats::merge(const ItemCodeStats& o) {
    max_code_norm = std::max(max_code_norm, o.max_code_norm);
    max_residual_norm = std::max(max_residual_norm, o.max_residual_norm);
    max_abs = std::max(max_abs, o.max_abs);
    finite = finite && o.finite;
}

void quantize_panels(const ItemView& items, int64_t first_panel, int64_t count, uint8_t* codes,
                     const CodePanelFloats& floats, ItemCodeStats& stats) {
    const int64_t dim = items.dim, padded = padded_dim(dim);
    const int64_t panel_bytes = code_panel_bytes(dim);
    alignas(64) int8_t row_codes[kMaxCodeDim];
    for (int64_t p = 0; p < count; ++p) {
        uint8_t* panel = codes + p * panel_bytes;
        const int64_t first = (first_panel + p) * kPanel;
        for (int lane = 0; lane < kPanel; ++lane) {
            const int64_t item = first + lane;
            const int64_t at = p * kPanel + lane;
            RowCode r{};
            r.finite = true;
            if (item < items.num_items) {
                r = code_any_row(items.data + item * items.row_stride, items.col_stride, dim, row_codes);
            } else {
                std::memset(row_codes, 0, static_cast<size_t>(dim));
            }
            std::memset(row_codes + dim, 0, static_cast<size_t>(padded - dim));
            for (int64_t g = 0; g < padded / kGroup; ++g) {  // +128: the unsigned operand of vpdpbusd
                uint32_t word;
                std::memcpy(&word, row_codes + g * kGroup, sizeof(word));
                word ^= 0x80808080u;
                std::memcpy(panel + g * kPanel * kGroup + lane * kGroup, &word, sizeof(word));
            }
            floats.scale[at] = r.scale;
            floats.residual[at] = round_up(r.residual_norm);
            floats.span[at] = round_up(r.residual_norm + r.code_norm);
            if (item >= items.num_items) continue;
            stats.max_code_norm = std::max(stats.max_code_norm, r.code_norm);
            stats.max_residual_norm = std::max(stats.max_residual_norm, r.residual_norm);
            stats.max_abs = std::max(stats.max_abs, r.max_abs);
            stats.finite = stats.finite && r.finite;
        }
    }
}

void quantize_queries(const float* queries, int64_t num_queries, int64_t stride, int64_t dim, int num_threads,
                      QueryCodes& out) {
    const int64_t padded = padded_dim(dim);
    out.dim = dim;
    out.codes.assign(static_cast<size_t>(num_queries * padded), 0);
    out.offset.resize(num_queries);
    out.unit_code_norm.resize(num_queries);
    out.unit_residual.resize(num_queries);
    out.unit_margin.resize(num_queries);
    out.scale.resize(num_queries);
    out.code_norm.resize(num_queries);
    out.residual_norm.resize(num_queries);
    out.max_abs.resize(num_queries);
    out.finite.resize(num_queries);
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t q = 0; q < num_queries; ++q) {
        int8_t* row = out.codes.data() + q * padded;
        const RowCode r = code_any_row(queries + q * stride, 1, dim, row);
        int32_t sum = 0;
        for (int64_t d = 0; d < dim; ++d) sum += row[d];
        out.offset[q] = -128 * sum;
        out.scale[q] = r.scale;
        // In units of the scale. The residual carries the allowance for every float32 rounding of
        // the bounds and of the float32 scores (screen.cpp): items' spans multiply it.
        const double scale = r.scale, dim_d = static_cast<double>(dim);
        const double code_norm = scale > 0 ? r.code_norm / scale : 0.0, residual = scale > 0 ? r.residual_norm / scale : 0.0;
        const double rounding = dim_d * kUnit / (1.0 - dim_d * kUnit) + 3.01 * kUnit;
        out.unit_code_norm[q] = round_up(code_norm);
        out.unit_residual[q] = round_up((residual + rounding * (code_norm + residual)) * (1.0 + 1e-6));
        out.unit_margin[q] = scale > 0 ? round_up((dim_d + 16.0) * kSmallestNormal * (1.0 + 1.0 / scale)) : 0.0f;
        out.code_norm[q] = r.code_norm;
        out.residual_norm[q] = r.residual_norm;
        out.max_abs[q] = r.max_abs;
        out.finite[q] = r.finite;
    }
}

}  // namespace twotower
