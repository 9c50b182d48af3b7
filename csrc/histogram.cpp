#include "histogram.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <thread>
#include <vector>

namespace plumb {
namespace {

// Below this many ids a thread costs more to start than it saves.
constexpr int64_t kMinIdsPerThread = int64_t{1} << 16;
// Bounds a chunk so its uint32 sub-histogram counters cannot overflow.
constexpr int64_t kMaxIdsPerChunk = int64_t{1} << 30;
// Four interleaved sub-histograms break the store-to-load dependency between
// consecutive increments of a popular expert; beyond this E they stop fitting in cache.
constexpr int64_t kMaxExpertsForSubHistograms = 8192;
constexpr int kSubHistograms = 4;

struct WorkItem {
  int64_t layer;
  int64_t begin;  // flat offset of the first id of the chunk
  int64_t end;
};

struct ItemResult {
  BadId bad{-1, 0};
};

inline bool in_range(int64_t id, uint64_t num_experts) {
  return static_cast<uint64_t>(id) < num_experts;
}

// Counts ids[begin, end) into `counts` ([E] int64). Stops at the first invalid id,
// since the call will fail and its counts are discarded.
template <typename Id>
BadId count_chunk_direct(const Id* ids, int64_t begin, int64_t end, uint64_t num_experts,
                         int64_t* counts) {
  for (int64_t i = begin; i < end; ++i) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    if (in_range(id, num_experts)) {
      ++counts[id];
    } else if (id != -1) {
      return BadId{i, id};
    }
  }
  return BadId{-1, 0};
}

template <typename Id>
BadId count_chunk_interleaved(const Id* ids, int64_t begin, int64_t end,
                              uint64_t num_experts, uint32_t* sub, int64_t* counts) {
  const int64_t e = static_cast<int64_t>(num_experts);
  uint32_t* h0 = sub;
  uint32_t* h1 = sub + e;
  uint32_t* h2 = sub + 2 * e;
  uint32_t* h3 = sub + 3 * e;
  std::memset(sub, 0, sizeof(uint32_t) * kSubHistograms * e);
  int64_t i = begin;
  BadId bad{-1, 0};
  for (; i + 4 <= end; i += 4) {
    const int64_t a = ids[i], b = ids[i + 1], c = ids[i + 2], d = ids[i + 3];
    if (in_range(a, num_experts) & in_range(b, num_experts) & in_range(c, num_experts) &
        in_range(d, num_experts)) {
      ++h0[a];
      ++h1[b];
      ++h2[c];
      ++h3[d];
      continue;
    }
    bad = count_chunk_direct(ids, i, i + 4, num_experts, counts);
    if (bad.flat_index >= 0) return bad;
  }
  if (i < end) {
    bad = count_chunk_direct(ids, i, end, num_experts, counts);
    if (bad.flat_index >= 0) return bad;
  }
  for (int64_t x = 0; x < e; ++x) {
    counts[x] += static_cast<int64_t>(h0[x]) + h1[x] + h2[x] + h3[x];
  }
  return bad;
}

template <typename Id>
void run_items(const Id* ids, const std::vector<WorkItem>& items, size_t first, size_t last,
               uint64_t num_experts, int64_t* stage, std::vector<ItemResult>& results) {
  const int64_t e = static_cast<int64_t>(num_experts);
  const bool interleave = e <= kMaxExpertsForSubHistograms;
  std::vector<uint32_t> sub(interleave ? static_cast<size_t>(kSubHistograms * e) : 0);
  for (size_t it = first; it < last; ++it) {
    const WorkItem& item = items[it];
    int64_t* counts = stage + static_cast<int64_t>(it) * e;
    results[it].bad =
        interleave
            ? count_chunk_interleaved(ids, item.begin, item.end, num_experts, sub.data(), counts)
            : count_chunk_direct(ids, item.begin, item.end, num_experts, counts);
  }
}

std::vector<WorkItem> split_work(int64_t num_layers, int64_t ids_per_layer,
                                 int64_t num_experts, int threads) {
  int64_t chunks = 1;
  // Split layers into chunks only when there are fewer layers than threads and a
  // chunk still carries enough ids to amortise its private histogram.
  if (num_layers < threads && ids_per_layer > num_experts) {
    chunks = (threads + num_layers - 1) / num_layers;
    chunks = std::min(chunks, std::max<int64_t>(1, ids_per_layer / kMinIdsPerThread));
  }
  chunks = std::max(chunks, (ids_per_layer + kMaxIdsPerChunk - 1) / kMaxIdsPerChunk);
  std::vector<WorkItem> items;
  items.reserve(static_cast<size_t>(num_layers * chunks));
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t base = layer * ids_per_layer;
    for (int64_t c = 0; c < chunks; ++c) {
      items.push_back(WorkItem{layer, base + ids_per_layer * c / chunks,
                               base + ids_per_layer * (c + 1) / chunks});
    }
  }
  return items;
}

template <typename Id>
BadId accumulate_typed(const Id* ids, int64_t num_layers, int64_t ids_per_layer,
                       int64_t num_experts, int64_t* out, int num_threads) {
  const int64_t total = num_layers * ids_per_layer;
  int threads = std::max(1, num_threads);
  threads = static_cast<int>(
      std::min<int64_t>(threads, std::max<int64_t>(1, total / kMinIdsPerThread)));
  const std::vector<WorkItem> items = split_work(num_layers, ids_per_layer, num_experts, threads);
  threads = static_cast<int>(std::min<size_t>(threads, items.size()));

  size_t stage_len = 0;
  if (__builtin_mul_overflow(items.size(), static_cast<size_t>(num_experts), &stage_len)) {
    throw std::bad_alloc();
  }
  // Counts are staged privately so that `out` is written only once every id is known valid.
  std::vector<int64_t> stage(stage_len, 0);
  std::vector<ItemResult> results(items.size());
  const uint64_t e = static_cast<uint64_t>(num_experts);
  if (threads <= 1) {
    run_items(ids, items, 0, items.size(), e, stage.data(), results);
  } else {
    std::vector<std::thread> pool;
    pool.reserve(threads);
    const size_t n = items.size();
    for (int t = 0; t < threads; ++t) {
      const size_t first = n * t / threads;
      const size_t last = n * (t + 1) / threads;
      pool.emplace_back([&, first, last] {
        run_items(ids, items, first, last, e, stage.data(), results);
      });
    }
    for (auto& th : pool) th.join();
  }

  BadId first_bad{-1, 0};
  for (const ItemResult& r : results) {
    if (r.bad.flat_index >= 0 &&
        (first_bad.flat_index < 0 || r.bad.flat_index < first_bad.flat_index)) {
      first_bad = r.bad;
    }
  }
  if (first_bad.flat_index >= 0) return first_bad;

  for (size_t it = 0; it < items.size(); ++it) {
    int64_t* dst = out + items[it].layer * num_experts;
    const int64_t* src = stage.data() + static_cast<int64_t>(it) * num_experts;
    for (int64_t x = 0; x < num_experts; ++x) dst[x] += src[x];
  }
  return first_bad;
}

}  // namespace

int default_num_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp<unsigned>(hw == 0 ? 1 : hw, 1, 16));
}

BadId accumulate_histogram(const IdsView& ids, int64_t num_experts, int64_t* out,
                           int num_threads) {
  if (ids.num_layers == 0 || ids.ids_per_layer == 0) return BadId{-1, 0};
  if (ids.is_int64) {
    return accumulate_typed(static_cast<const int64_t*>(ids.data), ids.num_layers,
                            ids.ids_per_layer, num_experts, out, num_threads);
  }
  return accumulate_typed(static_cast<const int32_t*>(ids.data), ids.num_layers,
                          ids.ids_per_layer, num_experts, out, num_threads);
}

}  // namespace plumb
