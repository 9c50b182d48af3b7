// Fused, validated expert histogram over router top-k ids.
#pragma once

#include <cstdint>

namespace plumb {

// A C-contiguous block of expert ids viewed as [num_layers, ids_per_layer].
struct IdsView {
  const void* data;
  bool is_int64;  // element type: int64 if true, else int32
  int64_t num_layers;
  int64_t ids_per_layer;
};

// First invalid id in C order, or flat_index == -1 when every id is valid.
struct BadId {
  int64_t flat_index;
  int64_t value;
};

// Adds the per-layer histogram of `ids` to `out` (int64, [num_layers, num_experts],
// C-contiguous). Ids equal to -1 are padding; any other id outside [0, num_experts)
// makes the call return that id and leave `out` untouched. Thread-safe, needs no GIL.
// num_threads >= 1 is an upper bound: small inputs run on fewer threads.
BadId accumulate_histogram(const IdsView& ids, int64_t num_experts, int64_t* out,
                           int num_threads);

// Threads used when the caller does not say: the hardware concurrency, capped at 16.
int default_num_threads();

}  // namespace plumb
