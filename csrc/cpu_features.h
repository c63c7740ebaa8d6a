// Which scan kernel runs: chosen once from what the CPU (and OS) support, overridable per call or
// through the TWOTOWER_SIMD environment variable ("avx512", "avx2", "generic").
#pragma once

#include <string>
#include <vector>

#include "scan.h"

namespace twotower {

using ScanFn = void (*)(const ScanTask&);

std::vector<std::string> available_isas();  // best first; always ends with "generic"

// Resolves a request ("" = TWOTOWER_SIMD or else the best available) to a kernel.
// Throws std::invalid_argument naming the request when it is unknown or unsupported here.
ScanFn resolve_isa(const std::string& requested, std::string* chosen_name = nullptr);

}  // namespace twotower
