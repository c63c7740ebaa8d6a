// Python binding: argument validation, conversion and GIL handling only. Every check runs before
// any kernel touches memory, and each error names the argument and what was seen.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "topk.h"

namespace py = pybind11;
using twotower::ItemView;
using twotower::PackedItems;
using twotower::TopKArgs;

namespace {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string type_name(py::handle obj) { return py::str(py::type::of(obj).attr("__name__")); }

py::array as_array(py::handle obj, const char* name) {
    if (py::isinstance<py::array>(obj)) return py::reinterpret_borrow<py::array>(obj);
    try {
        return py::module_::import("numpy").attr("asarray")(obj);
    } catch (py::error_already_set&) {
        throw py::type_error(std::string(name) + " must be a NumPy array or an object exposing the buffer protocol; got " +
                             type_name(obj));
    }
}

// A float32 [rows, D] array whose element strides are whole floats; copies only when they are not
// (or when `contiguous_rows` is asked and the inner stride is not 1).
py::array float_matrix(py::handle obj, const char* name, bool contiguous_rows) {
    py::array a = as_array(obj, name);
    if (!py::isinstance<py::array_t<float>>(a))
        throw py::type_error(std::string(name) + " must be float32; got dtype " + std::string(py::str(a.dtype())) +
                             " (convert with .astype(numpy.float32))");
    if (a.ndim() != 2)
        throw py::value_error(std::string(name) + " must be a 2-D array [rows, D]; got shape " + shape_str(a));
    if (a.shape(1) < 1) throw py::value_error(std::string(name) + " must have D >= 1 columns; got shape " + shape_str(a));
    const bool aligned = reinterpret_cast<std::uintptr_t>(a.data()) % sizeof(float) == 0 &&
                         a.strides(0) % static_cast<py::ssize_t>(sizeof(float)) == 0 &&
                         a.strides(1) % static_cast<py::ssize_t>(sizeof(float)) == 0;
    const bool rows_ok = !contiguous_rows || a.strides(1) == sizeof(float) || a.shape(1) == 1;
    if (!aligned || !rows_ok) a = py::module_::import("numpy").attr("ascontiguousarray")(a);
    return a;
}

int64_t stride_elems(const py::array& a, int axis) { return a.strides(axis) / static_cast<py::ssize_t>(sizeof(float)); }

// The default thread count: OMP_NUM_THREADS when set to a positive number, else every core. Not
// omp_get_max_threads(): torch.set_num_threads() changes it for the whole process (they share the
// OpenMP runtime), and a trainer running torch on one thread would otherwise evaluate on one too.
int default_threads() {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {
        char* end = nullptr;
        const long n = std::strtol(env, &end, 10);  // "4" or the first level of "4,2"
        if (end != env && n >= 1 && n <= 4096) return static_cast<int>(n);
    }
    return std::max(1, omp_get_num_procs());
}

// An integer argument given as a Python int or any integer scalar (numpy.int64, ...): whatever has
// __index__, bools excepted. nullopt when it is not an integer; `too_large` when it overflows.
std::optional<long long> integer_value(const py::object& obj, bool& too_large) {
    too_large = false;
    if (py::isinstance<py::bool_>(obj)) return std::nullopt;  // numpy.bool_ has no __index__
    PyObject* index = PyNumber_Index(obj.ptr());
    if (index == nullptr) {
        PyErr_Clear();
        return std::nullopt;
    }
    const py::object owned = py::reinterpret_steal<py::object>(index);
    int overflow = 0;
    const long long value = PyLong_AsLongLongAndOverflow(owned.ptr(), &overflow);
    if (overflow != 0) {
        too_large = true;
        return std::nullopt;
    }
    return value;
}

int resolve_threads(const py::object& num_threads) {
    if (num_threads.is_none()) return default_threads();
    bool too_large = false;
    const std::optional<long long> n = integer_value(num_threads, too_large);
    if (!n && !too_large) throw py::type_error("num_threads must be an int or None; got " + type_name(num_threads));
    if (too_large || *n < 1 || *n > 4096)
        throw py::value_error("num_threads must be between 1 and 4096; got " + std::string(py::str(num_threads)));
    return static_cast<int>(*n);
}

int64_t resolve_k(const py::object& k, int64_t num_queries) {
    bool too_large = false;
    const std::optional<long long> parsed = integer_value(k, too_large);
    if (too_large) throw py::value_error("k is too large");
    if (!parsed) throw py::type_error("k must be an int; got " + type_name(k));
    const long long value = *parsed;
    if (value < 1) throw py::value_error("k must be >= 1; got " + std::to_string(value));
    const int64_t limit = (int64_t{1} << 40) / std::max<int64_t>(num_queries, 1);
    if (value > limit)
        throw py::value_error("k = " + std::to_string(value) + " with " + std::to_string(num_queries) +
                              " queries asks for an output larger than 2^40 entries");
    return value;
}

template <typename T>
bool is_int_array(const py::array& a) {
    return py::isinstance<py::array_t<T>>(a);
}

// Validated exclusion lists, sorted per query, ready for the kernels.
struct Exclusions {
    std::vector<int64_t> indptr;
    std::vector<int64_t> ids;
};

std::optional<Exclusions> resolve_exclude(const py::object& indptr_obj, const py::object& indices_obj,
                                          int64_t num_queries, int64_t num_items, int threads) {
    if (indptr_obj.is_none() && indices_obj.is_none()) return std::nullopt;
    if (indptr_obj.is_none() || indices_obj.is_none())
        throw py::value_error("exclude needs both indptr and indices");
    py::array indptr_any = as_array(indptr_obj, "exclude indptr");
    py::array indices_any = as_array(indices_obj, "exclude indices");
    for (auto [arr, name] : {std::pair{&indptr_any, "exclude indptr"}, std::pair{&indices_any, "exclude indices"}}) {
        if (!is_int_array<int32_t>(*arr) && !is_int_array<int64_t>(*arr))
            throw py::type_error(std::string(name) + " must be int32 or int64; got dtype " + std::string(py::str(arr->dtype())));
        if (arr->ndim() != 1)
            throw py::value_error(std::string(name) + " must be 1-D; got shape " + shape_str(*arr));
    }
    if (indptr_any.shape(0) != num_queries + 1)
        throw py::value_error("exclude indptr must have B + 1 = " + std::to_string(num_queries + 1) +
                              " entries; got " + std::to_string(indptr_any.shape(0)));
    Exclusions ex;
    auto indptr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(indptr_any);
    ex.indptr.assign(indptr.data(), indptr.data() + indptr.shape(0));
    const int64_t nnz = indices_any.shape(0);
    if (ex.indptr[0] != 0) throw py::value_error("exclude indptr[0] must be 0; got " + std::to_string(ex.indptr[0]));
    for (int64_t q = 0; q < num_queries; ++q)
        if (ex.indptr[q + 1] < ex.indptr[q])
            throw py::value_error("exclude indptr must be non-decreasing; indptr[" + std::to_string(q + 1) + "] = " +
                                  std::to_string(ex.indptr[q + 1]) + " < indptr[" + std::to_string(q) + "] = " +
                                  std::to_string(ex.indptr[q]));
    if (ex.indptr[num_queries] != nnz)
        throw py::value_error("exclude indptr[-1] must equal len(indices) = " + std::to_string(nnz) + "; got " +
                              std::to_string(ex.indptr[num_queries]));
    auto check_and_sort = [&](auto typed) {
        const auto* ids = typed.data();
        for (int64_t i = 0; i < nnz; ++i)
            if (ids[i] < 0 || ids[i] >= num_items)
                throw py::value_error("exclude indices must be item ids in [0, " + std::to_string(num_items) +
                                      "); found " + std::to_string(static_cast<int64_t>(ids[i])) + " at position " +
                                      std::to_string(i));
        py::gil_scoped_release release;
        ex.ids = twotower::sorted_exclusions(ex.indptr.data(), ids, num_queries, threads);
    };
    if (is_int_array<int32_t>(indices_any))
        check_and_sort(py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(indices_any));
    else
        check_and_sort(py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(indices_any));
    return ex;
}

twotower::ScanPath resolve_simd(const std::string& simd) {
    try {
        return twotower::resolve_isa(simd);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

ItemView item_view(const py::array& items) {
    return ItemView{static_cast<const float*>(items.data()), items.shape(0), items.shape(1), stride_elems(items, 0),
                    stride_elems(items, 1)};
}

// Shared by topk() and PackedItems.search(): validates queries/k/exclude, allocates the outputs,
// then runs `kernel` without the GIL. With `with_report`, a third element says what the search did.
template <typename Kernel>
py::tuple search(const py::object& queries_obj, int64_t num_items, int64_t dim, const py::object& k_obj,
                 const py::object& exclude_indptr, const py::object& exclude_indices, const py::object& num_threads,
                 const std::string& simd, bool with_report, Kernel&& kernel) {
    py::array queries = float_matrix(queries_obj, "queries", /*contiguous_rows=*/true);
    if (queries.shape(1) != dim)
        throw py::value_error("queries and items must have the same dimension D; got queries " + shape_str(queries) +
                              " and items of D = " + std::to_string(dim));
    const int64_t num_queries = queries.shape(0);
    const int64_t k = resolve_k(k_obj, num_queries);
    const int threads = resolve_threads(num_threads);
    const twotower::ScanPath path = resolve_simd(simd);
    std::optional<Exclusions> ex = resolve_exclude(exclude_indptr, exclude_indices, num_queries, num_items, threads);

    py::array_t<float> scores({num_queries, k});
    py::array_t<int64_t> ids({num_queries, k});
    TopKArgs args{};
    args.queries = static_cast<const float*>(queries.data());
    args.num_queries = num_queries;
    args.query_stride = num_queries > 1 ? stride_elems(queries, 0) : 0;
    args.dim = dim;
    args.k = k;
    args.exclude_indptr = ex ? ex->indptr.data() : nullptr;
    args.exclude_ids = ex ? ex->ids.data() : nullptr;
    args.num_threads = threads;
    args.path = path;
    args.out_scores = scores.mutable_data();
    args.out_ids = ids.mutable_data();
    twotower::SearchReport report;
    {
        py::gil_scoped_release release;
        report = kernel(args);
    }
    if (!with_report) return py::make_tuple(scores, ids);
    py::dict info;
    info["screened"] = report.screened;
    info["fallback_queries"] = report.fallback_queries;
    return py::make_tuple(scores, ids, info);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "twotower's C++ exact top-K scorer (see twotower.topk and twotower.ExactIndex).";

    m.def(
        "topk",
        [](const py::object& queries, const py::object& items_obj, const py::object& k, const py::object& exclude_indptr,
           const py::object& exclude_indices, const py::object& num_threads, const std::string& simd, bool report) {
            py::array items = float_matrix(items_obj, "items", /*contiguous_rows=*/false);
            const ItemView view = item_view(items);
            return search(queries, view.num_items, view.dim, k, exclude_indptr, exclude_indices, num_threads, simd, report,
                          [&](const TopKArgs& args) { return twotower::topk_raw(args, view); });
        },
        py::arg("queries"), py::arg("items"), py::arg("k"), py::kw_only(), py::arg("exclude_indptr") = py::none(),
        py::arg("exclude_indices") = py::none(), py::arg("num_threads") = py::none(), py::arg("simd") = "",
        py::arg("report") = false,
        "Exact top-k of queries [B, D] against items [N, D] (float32). Returns (scores [B, k], ids [B, k]) and, with "
        "report=True, a dict saying whether the int8 screening ran and how many queries it rescanned in float32.");

    py::class_<PackedItems>(m, "PackedItems", "An item matrix packed once into the scan kernels' panel layout.")
        .def(py::init([](const py::object& items_obj, const py::object& num_threads, const py::object& screening) {
                 py::array items = float_matrix(items_obj, "items", /*contiguous_rows=*/false);
                 const int threads = resolve_threads(num_threads);
                 bool layout = twotower::cpu_can_screen();
                 if (!screening.is_none()) {
                     if (!py::isinstance<py::bool_>(screening))
                         throw py::type_error("screening must be True, False or None; got " +
                                              type_name(screening));
                     layout = screening.cast<bool>();
                     if (layout && !twotower::cpu_can_screen())
                         throw py::value_error("screening=True needs AVX-512 VNNI, which this CPU does not have");
                 }
                 const ItemView view = item_view(items);
                 py::gil_scoped_release release;
                 return new PackedItems(view, threads, layout);
             }),
             py::arg("items"), py::kw_only(), py::arg("num_threads") = py::none(), py::arg("screening") = py::none())
        .def(
            "search",
            [](const PackedItems& self, const py::object& queries, const py::object& k, const py::object& exclude_indptr,
               const py::object& exclude_indices, const py::object& num_threads, const std::string& simd, bool report) {
                return search(queries, self.num_items(), self.dim(), k, exclude_indptr, exclude_indices, num_threads, simd,
                              report, [&](const TopKArgs& args) { return self.search(args); });
            },
            py::arg("queries"), py::arg("k"), py::kw_only(), py::arg("exclude_indptr") = py::none(),
            py::arg("exclude_indices") = py::none(), py::arg("num_threads") = py::none(), py::arg("simd") = "",
            py::arg("report") = false)
        .def_property_readonly("num_items", &PackedItems::num_items)
        .def_property_readonly("dim", &PackedItems::dim)
        .def_property_readonly("nbytes", &PackedItems::nbytes)
        .def_property_readonly("screening", &PackedItems::screening_layout);

    m.def("available_simd", &twotower::available_isas, "SIMD paths this CPU supports, best first.");
    m.def("default_num_threads", &default_threads,
          "Threads a call with num_threads=None uses: OMP_NUM_THREADS when set, else every core.");
    m.def(
        "selected_simd",
        [](const std::string& simd) {
            std::string name;
            try {
                twotower::resolve_isa(simd, &name);
            } catch (const std::invalid_argument& e) {
                throw py::value_error(e.what());
            }
            return name;
        },
        py::arg("simd") = "", "The SIMD path a call with this `simd` argument would use (honours TWOTOWER_SIMD).");
}
