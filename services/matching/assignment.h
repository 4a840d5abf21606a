#pragma once
// Batch assignment as a minimum-cost flow (LEMON's network simplex): pure, no gRPC, no SQL.
//
// Graph: source → request (capacity: the request's units), request → supporter for every eligible
// pair (capacity: the request's units, cost: −value per unit), supporter → sink (capacity: the
// supporter's remaining units), and a zero-cost bypass source → sink so that leaving a request
// unassigned is always feasible. The minimum-cost flow is the maximum-value assignment.
//
// Exactness. When every request needs the same number of units u (the common case, and always
// when acuity weights are not used), supporters' capacities become ⌊remaining / u⌋ slots and
// the flow is a transportation problem: network simplex returns an integral optimum, which is an
// optimal assignment (proven against exhaustive search in tests). With mixed units the problem
// is a generalised assignment problem (NP-hard) and a flow may split a request across
// supporters; then the flow is its LP relaxation: requests the flow serves whole are kept, the
// flow is solved again for the split ones in the capacity left (a few rounds, while that assigns
// more), what is still open is filled greedily, and the result is never worse than the greedy
// baseline (the better of the two is returned). Each flow leaves out the pairs whose supporter
// has fewer units left than the request takes (they could only carry a split): still a
// relaxation, a tighter one, and after the first round a fraction of the pairs. `upper_bound` is
// the first LP value, so the remaining optimality gap is reported, not hidden (`exact` only when it
// is zero). A component of up to 12 requests with mixed units is then solved exactly by branch and
// bound from that assignment (given up, keeping the best found, after 50,000 nodes); `exact` says
// it finished.
//
// Components. Requests and supporters that share no candidate pair do not compete, so each
// connected component of the candidate graph is solved on its own: the same optimum, much less
// work when hard constraints (a required region or language) split the roster, and a component
// whose requests all take the same units is exact even when units differ elsewhere.
#include <vector>

namespace peerpath::matching {

struct AssignmentProblem {
  struct Candidate {
    int request = 0;
    int supporter = 0;
    double value = 0;  // > 0: what assigning the pair is worth.
  };
  std::vector<int> units;     // Per request: units it takes (≥ 1).
  std::vector<int> capacity;  // Per supporter: remaining units (≥ 0).
  std::vector<Candidate> candidates;
};

struct AssignmentResult {
  std::vector<int> supporter_of;  // Per request: the supporter index, or −1.
  double total_value = 0;
  int assigned = 0;
  // An upper bound on the optimum (the flow's value); equals total_value when `exact`.
  double upper_bound = 0;
  bool exact = false;  // Proven optimal (uniform units in every component, or the bound reached).
};

// The maximum-value assignment (see the file comment).
AssignmentResult AssignOptimal(const AssignmentProblem& problem);

// Baseline: pairs by value descending, each taken when its request is free and the supporter
// has the units.
AssignmentResult AssignGreedy(const AssignmentProblem& problem);

// Whether `supporter_of` respects candidates and capacities; its value in *value.
bool IsFeasible(const AssignmentProblem& problem, const std::vector<int>& supporter_of,
                double* value);

}  // namespace peerpath::matching
