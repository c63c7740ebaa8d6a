// Which scan kernel runs: chosen once from what the CPU (and OS) support, overridable per call or
// through the TWOTOWER_SIMD environment variable ("avx512_vnni", "avx512", "avx2", "generic").
#pragma once

#include <string>
#include <vector>

#include "scan.h"

namespace twotower {

using ScanFn = void (*)(const ScanTask&);

// A resolved path: the float32 scan, and whether an int8 screening pass (screen.cpp) may run first:
// where it pays off, or, when the path was asked for by name, wherever it applies.
struct ScanPath {
    ScanFn scan = nullptr;
    bool screen = false;
    bool forced = false;
};

std::vector<std::string> available_isas();  // best first; always ends with "generic"
bool cpu_can_screen();                      // the int8 screening kernel runs on this CPU

// Resolves a request ("" = TWOTOWER_SIMD or else the best available) to a path.
// Throws std::invalid_argument naming the request when it is unknown or unsupported here.
ScanPath resolve_isa(const std::string& requested, std::string* chosen_name = nullptr);

}  // namespace twotower
