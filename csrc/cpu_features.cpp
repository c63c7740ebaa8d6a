#include "cpu_features.h"

#include <cstdlib>
#include <stdexcept>

namespace twotower {

std::vector<std::string> available_isas() {
    std::vector<std::string> names;
#if defined(TWOTOWER_X86)
    __builtin_cpu_init();
    // GCC's checks include the OS's XSAVE support for the wider registers.
    if (cpu_can_screen()) names.push_back("avx512_vnni");
    if (__builtin_cpu_supports("avx512f")) names.push_back("avx512");
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) names.push_back("avx2");
#endif
    names.push_back("generic");
    return names;
}

bool cpu_can_screen() {
#if defined(TWOTOWER_X86)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

ScanPath resolve_isa(const std::string& requested, std::string* chosen_name) {
    std::string name = requested;
    if (name.empty()) {
        const char* env = std::getenv("TWOTOWER_SIMD");
        if (env && *env) name = env;
    }
    const std::vector<std::string> available = available_isas();
    const bool forced = !name.empty();
    if (name.empty()) name = available.front();
    bool supported = false;
    for (const auto& a : available) supported = supported || a == name;
    if (!supported) {
        std::string list;
        for (const auto& a : available) list += (list.empty() ? "" : ", ") + a;
        throw std::invalid_argument("SIMD path '" + name + "' (from the simd argument or TWOTOWER_SIMD) is not "
                                    "available on this CPU; available: " + list);
    }
    if (chosen_name) *chosen_name = name;
#if defined(TWOTOWER_X86)
    if (name == "avx512_vnni") return ScanPath{scan_avx512, true, forced};
    if (name == "avx512") return ScanPath{scan_avx512, false, forced};
    if (name == "avx2") return ScanPath{scan_avx2, false, forced};
#endif
    return ScanPath{scan_generic, false, forced};
}

}  // namespace twotower
