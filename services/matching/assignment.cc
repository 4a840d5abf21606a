#include "services/matching/assignment.h"

#include <lemon/network_simplex.h>
#include <lemon/smart_graph.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>

#include "common/parallel.h"

namespace peerpath::matching {
namespace {

// Values are compared in thousandths: costs must be integers for an exact network simplex.
constexpr double kScale = 1000.0;

void Finish(const AssignmentProblem& problem, AssignmentResult& result) {
  result.total_value = 0;
  result.assigned = 0;
  std::vector<double> value(result.supporter_of.size(), 0);
  for (const auto& c : problem.candidates) {
    if (result.supporter_of[c.request] == c.supporter) {
      value[c.request] = std::max(value[c.request], c.value);
    }
  }
  for (size_t r = 0; r < result.supporter_of.size(); ++r) {
    if (result.supporter_of[r] < 0) continue;
    result.total_value += value[r];
    ++result.assigned;
  }
}

// Greedy over `order` into the capacity `left`, for requests still unassigned.
void FillGreedily(const AssignmentProblem& problem, const std::vector<int>& order,
                  std::vector<int>& left, std::vector<int>& supporter_of) {
  for (int i : order) {
    const auto& c = problem.candidates[i];
    if (supporter_of[c.request] >= 0) continue;
    if (left[c.supporter] < problem.units[c.request]) continue;
    left[c.supporter] -= problem.units[c.request];
    supporter_of[c.request] = c.supporter;
  }
}

std::vector<int> ByValueDescending(const AssignmentProblem& problem) {
  std::vector<int> order(problem.candidates.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return problem.candidates[a].value > problem.candidates[b].value;
  });
  return order;
}

// The greedy baseline over candidates in `order` (ByValueDescending).
AssignmentResult Greedy(const AssignmentProblem& problem, const std::vector<int>& order) {
  AssignmentResult result;
  result.supporter_of.assign(problem.units.size(), -1);
  std::vector<int> left = problem.capacity;
  FillGreedily(problem, order, left, result.supporter_of);
  Finish(problem, result);
  result.upper_bound = result.total_value;
  return result;
}

}  // namespace

AssignmentResult AssignGreedy(const AssignmentProblem& problem) {
  return Greedy(problem, ByValueDescending(problem));
}

namespace {

// One min-cost flow over the requests still unassigned (supporter_of −1), within the capacities
// `left`. Requests the flow serves whole are assigned (and their units taken from `left`).
// Returns the flow's value (an upper bound for these requests and capacities), and how many
// requests it assigned in *assigned.
double SolveFlow(const AssignmentProblem& problem, bool uniform, int64_t unit,
                 std::vector<int>& left, std::vector<int>& supporter_of, int* assigned) {
  const int requests = static_cast<int>(problem.units.size());
  const int supporters = static_cast<int>(problem.capacity.size());
  auto demand = [&](int r) -> int64_t { return uniform ? 1 : problem.units[r]; };
  // Only pairs that could still be assigned whole: a supporter with fewer units left than the
  // request takes can carry only a split of it, which is never kept. Without those arcs the flow
  // is still a relaxation of the assignment (so the first value is still an upper bound), and
  // after the first round, when most supporters are full, the graph is a fraction of the pairs.
  auto assignable = [&](const AssignmentProblem::Candidate& c) {
    return supporter_of[c.request] < 0 && left[c.supporter] >= problem.units[c.request];
  };
  std::vector<char> has_pair(requests, 0);
  int pairs = 0;
  for (const auto& c : problem.candidates) {
    if (!assignable(c)) continue;
    has_pair[c.request] = 1;
    ++pairs;
  }
  using Graph = lemon::SmartDigraph;
  Graph graph;
  graph.reserveNode(requests + supporters + 2);
  graph.reserveArc(pairs + requests + supporters + 1);
  const Graph::Node source = graph.addNode();
  const Graph::Node sink = graph.addNode();
  std::vector<Graph::Node> request_node(requests), supporter_node(supporters);
  for (auto& n : request_node) n = graph.addNode();
  for (auto& n : supporter_node) n = graph.addNode();
  Graph::ArcMap<int64_t> upper(graph), cost(graph);
  int64_t total_demand = 0;
  for (int r = 0; r < requests; ++r) {
    if (!has_pair[r]) continue;
    const auto arc = graph.addArc(source, request_node[r]);
    upper[arc] = demand(r);
    cost[arc] = 0;
    total_demand += demand(r);
  }
  for (int s = 0; s < supporters; ++s) {
    const auto arc = graph.addArc(supporter_node[s], sink);
    upper[arc] = std::max<int64_t>(0, left[s]) / unit;
    cost[arc] = 0;
  }
  const auto bypass = graph.addArc(source, sink);
  upper[bypass] = total_demand;
  cost[bypass] = 0;
  std::vector<std::pair<size_t, Graph::Arc>> pair_arcs;
  pair_arcs.reserve(pairs);
  for (size_t i = 0; i < problem.candidates.size(); ++i) {
    const auto& c = problem.candidates[i];
    if (!assignable(c)) continue;
    const auto arc = graph.addArc(request_node[c.request], supporter_node[c.supporter]);
    upper[arc] = demand(c.request);
    // Cost per unit of flow; a request's whole flow is worth −value.
    cost[arc] = -std::llround(c.value * kScale / static_cast<double>(demand(c.request)));
    pair_arcs.emplace_back(i, arc);
  }
  lemon::NetworkSimplex<Graph, int64_t, int64_t> solver(graph);
  solver.upperMap(upper).costMap(cost).stSupply(source, sink, total_demand);
  *assigned = 0;
  // Always OPTIMAL: the bypass arc makes every supply feasible and costs are bounded.
  if (solver.run() != lemon::NetworkSimplex<Graph, int64_t, int64_t>::OPTIMAL) return 0;
  for (const auto& [i, arc] : pair_arcs) {
    const auto& c = problem.candidates[i];
    if (solver.flow(arc) == demand(c.request) && supporter_of[c.request] < 0) {
      supporter_of[c.request] = c.supporter;
      left[c.supporter] -= problem.units[c.request];
      ++*assigned;
    }
  }
  return -static_cast<double>(solver.totalCost()) / kScale;
}

}  // namespace

namespace {

// Small mixed-units components are solved exactly: a depth-first branch and bound over their
// requests (each given one of its candidates with room, or none), best values first, pruned by
// the value still reachable if every remaining request got its best candidate. It starts from the
// heuristic's assignment and gives up (leaving it) after kExactNodes nodes, so a component costs
// at most about half a millisecond more (measured with 12 requests each free to take any of four
// supporters).
constexpr int kExactRequests = 12;
constexpr int64_t kExactNodes = 50000;

class BranchAndBound {
 public:
  explicit BranchAndBound(const AssignmentProblem& problem) : problem_(problem) {
    options_.resize(problem.units.size());
    for (size_t i = 0; i < problem.candidates.size(); ++i) {
      options_[problem.candidates[i].request].push_back(static_cast<int>(i));
    }
    for (int r = 0; r < static_cast<int>(options_.size()); ++r) {
      auto& o = options_[r];
      if (o.empty()) continue;
      std::sort(o.begin(), o.end(), [&](int a, int b) {
        return problem.candidates[a].value > problem.candidates[b].value;
      });
      order_.push_back(r);
    }
    std::sort(order_.begin(), order_.end(), [&](int a, int b) {
      return problem.candidates[options_[a][0]].value > problem.candidates[options_[b][0]].value;
    });
    reachable_.assign(order_.size() + 1, 0);
    for (size_t k = order_.size(); k-- > 0;) {
      reachable_[k] = reachable_[k + 1] + problem.candidates[options_[order_[k]][0]].value;
    }
  }

  bool small() const { return static_cast<int>(order_.size()) <= kExactRequests; }

  // Improves `result` (feasible, with its total_value) to an optimum; false when the node budget
  // ran out first (then `result` is the best assignment found, no worse than it was).
  bool Solve(AssignmentResult& result) {
    best_value_ = result.total_value;
    best_ = result.supporter_of;
    current_.assign(problem_.units.size(), -1);
    left_ = problem_.capacity;
    nodes_ = 0;
    const bool complete = Visit(0, 0);
    result.supporter_of = best_;
    return complete;
  }

 private:
  bool Visit(size_t k, double value) {
    if (++nodes_ > kExactNodes) return false;
    if (value + reachable_[k] <= best_value_ + 1e-9) return true;  // Cannot beat the best.
    if (k == order_.size()) {
      best_value_ = value;
      best_ = current_;
      return true;
    }
    const int r = order_[k];
    const int units = problem_.units[r];
    for (int i : options_[r]) {
      const auto& c = problem_.candidates[i];
      if (left_[c.supporter] < units) continue;
      left_[c.supporter] -= units;
      current_[r] = c.supporter;
      const bool complete = Visit(k + 1, value + c.value);
      left_[c.supporter] += units;
      current_[r] = -1;
      if (!complete) return false;
    }
    return Visit(k + 1, value);  // The request left unassigned.
  }

  const AssignmentProblem& problem_;
  std::vector<std::vector<int>> options_;  // Per request: its candidates, best value first.
  std::vector<int> order_;                 // Requests with a candidate, best value first.
  std::vector<double> reachable_;          // Suffix sums of each request's best value.
  std::vector<int> current_, best_, left_;
  double best_value_ = 0;
  int64_t nodes_ = 0;
};

// AssignOptimal for one connected component (or the whole problem).
AssignmentResult AssignConnected(const AssignmentProblem& problem) {
  const int requests = static_cast<int>(problem.units.size());
  // Uniform when every request that has a candidate takes the same units u: then one unit of
  // flow per request and ⌊capacity / u⌋ slots per supporter (requests without a candidate only
  // take the bypass).
  int common_units = 0;
  bool uniform = true;
  for (const auto& c : problem.candidates) {
    const int u = problem.units[c.request];
    if (common_units == 0) common_units = u;
    uniform = uniform && u == common_units;
  }
  const int64_t unit = uniform && common_units > 0 ? common_units : 1;
  AssignmentResult result;
  result.supporter_of.assign(requests, -1);
  std::vector<int> left = problem.capacity;
  int assigned = 0;
  result.upper_bound = SolveFlow(problem, uniform, unit, left, result.supporter_of, &assigned);
  if (uniform) {
    result.exact = true;
    Finish(problem, result);
    return result;
  }
  // Mixed units: the flow is the LP relaxation. Keep the requests it served whole, solve again
  // for the split ones in the capacity left (a few rounds while that assigns more), fill what
  // is still open greedily, and never return less than the greedy baseline.
  for (int round = 0; round < 8 && assigned > 0; ++round) {
    SolveFlow(problem, uniform, unit, left, result.supporter_of, &assigned);
  }
  // One sort of the candidates (millions in a large component) serves both greedy passes.
  const std::vector<int> by_value = ByValueDescending(problem);
  FillGreedily(problem, by_value, left, result.supporter_of);
  Finish(problem, result);
  AssignmentResult greedy = Greedy(problem, by_value);
  const double bound = result.upper_bound;
  if (greedy.total_value > result.total_value) result = std::move(greedy);
  result.upper_bound = std::max(bound, result.total_value);
  result.exact = result.total_value >= bound - 1e-6;
  if (!result.exact) {
    BranchAndBound search(problem);
    if (search.small()) {
      const bool complete = search.Solve(result);
      Finish(problem, result);
      result.upper_bound = std::max(result.upper_bound, result.total_value);
      if (complete) {
        result.exact = true;
        result.upper_bound = result.total_value;
      }
    }
  }
  return result;
}

// Connected components of the candidate graph (requests and supporters joined by candidate
// pairs): the component of each candidate, and how many components there are.
int Components(const AssignmentProblem& problem, std::vector<int>& component_of_candidate) {
  const int requests = static_cast<int>(problem.units.size());
  std::vector<int> parent(requests + problem.capacity.size());
  std::iota(parent.begin(), parent.end(), 0);
  auto find = [&](int x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  for (const auto& c : problem.candidates) {
    const int a = find(c.request), b = find(requests + c.supporter);
    if (a != b) parent[a] = b;
  }
  std::vector<int> id(parent.size(), -1);
  int count = 0;
  component_of_candidate.resize(problem.candidates.size());
  for (size_t i = 0; i < problem.candidates.size(); ++i) {
    const int root = find(problem.candidates[i].request);
    if (id[root] < 0) id[root] = count++;
    component_of_candidate[i] = id[root];
  }
  return count;
}

}  // namespace

AssignmentResult AssignOptimal(const AssignmentProblem& problem) {
  // Requests and supporters that share no candidate do not compete: each connected component is
  // solved on its own (exact, and much faster when hard constraints such as a required region
  // split the roster), and a component whose requests all take the same units is exact even
  // when units differ elsewhere.
  std::vector<int> component_of;
  const int components = Components(problem, component_of);
  if (components <= 1) return AssignConnected(problem);
  std::vector<AssignmentProblem> parts(components);
  std::vector<std::vector<int>> request_of(components), supporter_of(components);
  std::vector<int> local_request(problem.units.size(), -1);
  std::vector<int> local_supporter(problem.capacity.size(), -1);
  for (size_t i = 0; i < problem.candidates.size(); ++i) {
    const auto& c = problem.candidates[i];
    const int k = component_of[i];
    AssignmentProblem& part = parts[k];
    if (local_request[c.request] < 0) {
      local_request[c.request] = static_cast<int>(part.units.size());
      part.units.push_back(problem.units[c.request]);
      request_of[k].push_back(c.request);
    }
    if (local_supporter[c.supporter] < 0) {
      local_supporter[c.supporter] = static_cast<int>(part.capacity.size());
      part.capacity.push_back(problem.capacity[c.supporter]);
      supporter_of[k].push_back(c.supporter);
    }
    part.candidates.push_back({local_request[c.request], local_supporter[c.supporter], c.value});
  }
  AssignmentResult result;
  result.supporter_of.assign(problem.units.size(), -1);
  result.exact = true;
  // Components are independent: solved on every core.
  std::vector<AssignmentResult> solved(components);
  ForEachRange(solved.size(), LoopThreads(), 1, [&](size_t begin, size_t end) {
    for (size_t k = begin; k < end; ++k) solved[k] = AssignConnected(parts[k]);
  });
  for (int k = 0; k < components; ++k) {
    const AssignmentResult& part = solved[k];
    for (size_t r = 0; r < part.supporter_of.size(); ++r) {
      if (part.supporter_of[r] >= 0) {
        result.supporter_of[request_of[k][r]] = supporter_of[k][part.supporter_of[r]];
      }
    }
    result.upper_bound += part.upper_bound;
    result.exact = result.exact && part.exact;
  }
  Finish(problem, result);
  if (result.exact) result.upper_bound = result.total_value;
  result.upper_bound = std::max(result.upper_bound, result.total_value);
  return result;
}

bool IsFeasible(const AssignmentProblem& problem, const std::vector<int>& supporter_of,
                double* value) {
  if (supporter_of.size() != problem.units.size()) return false;
  std::vector<double> best(supporter_of.size(), -1);
  for (const auto& c : problem.candidates) {
    if (supporter_of[c.request] == c.supporter) {
      best[c.request] = std::max(best[c.request], c.value);
    }
  }
  std::vector<int64_t> used(problem.capacity.size(), 0);
  double total = 0;
  for (size_t r = 0; r < supporter_of.size(); ++r) {
    const int s = supporter_of[r];
    if (s < 0) continue;
    if (best[r] < 0) return false;
    total += best[r];
    used[s] += problem.units[r];
    if (used[s] > problem.capacity[s]) return false;
  }
  if (value != nullptr) *value = total;
  return true;
}

}  // namespace peerpath::matching
