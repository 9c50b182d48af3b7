// pybind11 face of the native kernels: argument checking happens here, before any write.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "histogram.h"

namespace py = pybind11;

namespace {

// The most worker threads a call may ask for (exported as plumb_native.MAX_THREADS).
constexpr long long kMaxThreads = 1024;

// Messages are joined with std::string and std::to_string, not iostreams: built with g++ 13.3
// (Ubuntu 24.04, libstdc++ 6.0.33, pybind11 3.1, Python 3.12), the first std::ostringstream
// used in this module segfaulted, with or without torch loaded, and an error message must
// never crash.
std::string join_ints(const int64_t* values, size_t count, const char* open, const char* close) {
  std::string text = open;
  for (size_t i = 0; i < count; ++i) {
    if (i) text += ", ";
    text += std::to_string(values[i]);
  }
  return text + close;
}

std::string shape_str(const std::vector<py::ssize_t>& shape) {
  const std::vector<int64_t> dims(shape.begin(), shape.end());
  return join_ints(dims.data(), dims.size(), "[", "]");
}

std::string position_str(int64_t flat, const std::vector<py::ssize_t>& shape) {
  std::vector<int64_t> index(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return join_ints(index.data(), index.size(), "(", index.size() == 1 ? ",)" : ")");
}

int resolve_threads(const py::object& num_threads) {
  if (num_threads.is_none()) return plumb::default_num_threads();
  if (!py::isinstance<py::int_>(num_threads) || py::isinstance<py::bool_>(num_threads)) {
    throw py::type_error("num_threads must be an int >= 1 or None");
  }
  const long long n = num_threads.cast<long long>();
  if (n < 1 || n > kMaxThreads) {
    throw py::value_error("num_threads must be in [1, " + std::to_string(kMaxThreads) +
                          "], got " + std::to_string(n));
  }
  return static_cast<int>(n);
}

py::array_t<int64_t> histogram(py::object ids_obj, py::object num_experts_obj, py::object out_obj,
                               py::object num_threads_obj) {
  if (!py::isinstance<py::array>(ids_obj)) {
    throw py::type_error("ids must be a numpy.ndarray of int32 or int64, got " +
                         std::string(py::str(py::type::of(ids_obj).attr("__name__"))));
  }
  if (!py::isinstance<py::int_>(num_experts_obj) || py::isinstance<py::bool_>(num_experts_obj)) {
    throw py::type_error("num_experts must be an int");
  }
  const long long num_experts = num_experts_obj.cast<long long>();
  if (num_experts < 1) {
    throw py::value_error("num_experts must be >= 1, got " + std::to_string(num_experts));
  }
  const int threads = resolve_threads(num_threads_obj);

  py::array ids = py::reinterpret_borrow<py::array>(ids_obj);
  const bool is_int64 = ids.dtype().is(py::dtype::of<int64_t>());
  const bool is_int32 = ids.dtype().is(py::dtype::of<int32_t>());
  if (!is_int64 && !is_int32) {
    throw py::type_error("ids must have dtype int32 or int64, got " +
                         std::string(py::str(ids.dtype())));
  }
  const py::ssize_t ndim = ids.ndim();
  if (ndim < 1 || ndim > 3) {
    throw py::value_error("ids must be [T, k] or [L, T, k] (or flat [N]), got ndim " +
                          std::to_string(ndim));
  }
  std::vector<py::ssize_t> shape(ids.shape(), ids.shape() + ndim);
  const int64_t num_layers = ndim == 3 ? shape[0] : 1;
  int64_t ids_per_layer = 1;
  for (py::ssize_t d = (ndim == 3 ? 1 : 0); d < ndim; ++d) ids_per_layer *= shape[d];

  std::vector<py::ssize_t> out_shape;
  if (ndim == 3) out_shape.push_back(shape[0]);
  out_shape.push_back(static_cast<py::ssize_t>(num_experts));

  py::array_t<int64_t> out;
  if (out_obj.is_none()) {
    out = py::array_t<int64_t>(out_shape);
    std::fill(out.mutable_data(), out.mutable_data() + out.size(), 0);
  } else {
    if (!py::isinstance<py::array>(out_obj)) {
      throw py::type_error("out must be a numpy.ndarray of int64 with shape " +
                           shape_str(out_shape));
    }
    py::array out_arr = py::reinterpret_borrow<py::array>(out_obj);
    if (!out_arr.dtype().is(py::dtype::of<int64_t>())) {
      throw py::type_error("out must have dtype int64, got " + std::string(py::str(out_arr.dtype())));
    }
    std::vector<py::ssize_t> got(out_arr.shape(), out_arr.shape() + out_arr.ndim());
    if (got != out_shape) {
      throw py::value_error("out must have shape " + shape_str(out_shape) + " for ids of shape " +
                            shape_str(shape) + " and num_experts=" + std::to_string(num_experts) +
                            ", got " + shape_str(got));
    }
    if (!(out_arr.flags() & py::array::c_style)) {
      throw py::value_error("out must be C-contiguous");
    }
    if (!out_arr.writeable()) throw py::value_error("out must be writeable");
    out = py::reinterpret_borrow<py::array_t<int64_t>>(out_arr);
  }

  // A strided view is copied once; the kernel reads contiguous rows.
  py::array contiguous = ids;
  if (!(ids.flags() & py::array::c_style)) {
    contiguous = py::module_::import("numpy").attr("ascontiguousarray")(ids).cast<py::array>();
  }
  plumb::IdsView view{contiguous.data(), is_int64, num_layers, ids_per_layer};
  int64_t* out_data = out.mutable_data();
  plumb::BadId bad;
  {
    py::gil_scoped_release release;
    bad = plumb::accumulate_histogram(view, num_experts, out_data, threads);
  }
  if (bad.flat_index >= 0) {
    throw py::value_error("expert id " + std::to_string(bad.value) + " at position " +
                          position_str(bad.flat_index, shape) + " of ids with shape " +
                          shape_str(shape) + " is outside [0, " + std::to_string(num_experts) +
                          "); only -1 is allowed as padding");
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "plumb native kernels";
  m.def("histogram", &histogram, py::arg("ids"), py::arg("num_experts"),
        py::arg("out") = py::none(), py::arg("num_threads") = py::none(),
        "Per-layer expert histogram of top-k ids; see plumb_native.histogram.");
  m.def("default_num_threads", &plumb::default_num_threads,
        "Threads used when num_threads is None.");
  m.attr("MAX_THREADS") = kMaxThreads;
}
