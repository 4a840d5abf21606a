// AssignOptimal (min-cost flow, LEMON network simplex) against the greedy baseline on generated
// instances of requests × supporters: capacity 1–8 units, about 50 eligible candidates per
// request, values as AssignBatch computes them ((100 + score) × urgency factor) with scores either
// random or correlated (some supporters suit most participants). Reports per instance: solve
// time (the benchmark time, graph building included), total value and assigned count of both,
// the gain over greedy, the gap to the flow's upper bound (0 = proven optimal) and peak RSS.
//
//   matching_assign_batch_bench                       # all sizes
//   matching_assign_batch_bench --benchmark_filter=/1000/200/  # only 1,000 × 200
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "services/matching/assignment.h"
#include "services/matching/model.h"

namespace peerpath::matching {
namespace {

enum class Scores { kRandom, kCorrelated };
enum class Units { kUniform, kMixed };

AssignmentProblem Generate(int requests, int supporters, Scores scores, Units units,
                           uint32_t seed) {
  std::mt19937 rng(seed);
  AssignmentProblem p;
  std::uniform_int_distribution<int> capacity(1, 8), pick(0, supporters - 1), unit(1, 3),
      urgency(1, 10);
  std::uniform_real_distribution<double> uniform(0, 100);
  std::normal_distribution<double> noise(0, 15);
  std::vector<double> quality(supporters);
  for (double& q : quality) q = uniform(rng);
  for (int s = 0; s < supporters; ++s) p.capacity.push_back(capacity(rng));
  for (int r = 0; r < requests; ++r) {
    p.units.push_back(units == Units::kMixed ? unit(rng) : 1);
    const int u = urgency(rng);
    const v1::Urgency level = u == 10  ? v1::URGENCY_URGENT
                              : u >= 8 ? v1::URGENCY_PRIORITY
                                       : v1::URGENCY_ROUTINE;
    const int candidates = std::min(supporters, 50);
    std::vector<char> taken(supporters, 0);
    for (int c = 0; c < candidates; ++c) {
      int s = pick(rng);
      while (taken[s]) s = (s + 1) % supporters;
      taken[s] = 1;
      double score = scores == Scores::kRandom ? uniform(rng) : quality[s] + noise(rng);
      score = std::clamp(score, 0.0, 100.0);
      p.candidates.push_back({r, s, BatchValue(score, false, level)});
    }
  }
  return p;
}

double PeakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

void BM_AssignBatch(benchmark::State& state) {
  const int requests = static_cast<int>(state.range(0));
  const int supporters = static_cast<int>(state.range(1));
  const auto scores = static_cast<Scores>(state.range(2));
  const auto units = static_cast<Units>(state.range(3));
  const AssignmentProblem problem = Generate(requests, supporters, scores, units, 20261123);
  AssignmentResult optimal;
  for (auto _ : state) {
    optimal = AssignOptimal(problem);
    benchmark::DoNotOptimize(optimal.total_value);
  }
  const AssignmentResult greedy = AssignGreedy(problem);
  state.counters["value"] = optimal.total_value;
  state.counters["assigned"] = optimal.assigned;
  state.counters["greedy_value"] = greedy.total_value;
  state.counters["greedy_assigned"] = greedy.assigned;
  state.counters["gain_pct"] =
      100.0 * (optimal.total_value - greedy.total_value) / std::max(1.0, greedy.total_value);
  state.counters["gap_to_bound_pct"] =
      100.0 * (optimal.upper_bound - optimal.total_value) / std::max(1.0, optimal.upper_bound);
  state.counters["below_greedy"] = optimal.total_value + 1e-6 < greedy.total_value ? 1 : 0;
  state.counters["peak_rss_MiB"] = PeakRssMiB();
  state.SetLabel(absl::StrCat(requests, "x", supporters,
                              scores == Scores::kRandom ? " random" : " correlated",
                              units == Units::kUniform ? " unit-weights" : " acuity-1..3"));
}

void Sizes(benchmark::internal::Benchmark* b) {
  for (auto [r, s] : {std::pair{1000, 200}, {10000, 2000}, {50000, 10000}}) {
    for (int scores : {0, 1}) {
      for (int units : {0, 1}) b->Args({r, s, scores, units});
    }
  }
}

BENCHMARK(BM_AssignBatch)->Apply(Sizes)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace peerpath::matching

BENCHMARK_MAIN();
