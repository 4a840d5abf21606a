// AssignOptimal is the maximum-value assignment: checked against exhaustive search on small
// random instances, and never below the greedy baseline.
#include "services/matching/assignment.h"

#include <gtest/gtest.h>

#include <random>

namespace peerpath::matching {
namespace {

AssignmentProblem RandomProblem(std::mt19937& rng, int requests, int supporters, bool mixed_units) {
  AssignmentProblem p;
  std::uniform_int_distribution<int> units(1, 3), capacity(0, 4), value(1, 400);
  std::bernoulli_distribution edge(0.6);
  for (int r = 0; r < requests; ++r) p.units.push_back(mixed_units ? units(rng) : 1);
  for (int s = 0; s < supporters; ++s) p.capacity.push_back(capacity(rng));
  for (int r = 0; r < requests; ++r) {
    for (int s = 0; s < supporters; ++s) {
      if (edge(rng)) p.candidates.push_back({r, s, value(rng) / 4.0});
    }
  }
  return p;
}

// The best value over every assignment ((supporters + 1)^requests of them).
double Exhaustive(const AssignmentProblem& p) {
  const int requests = static_cast<int>(p.units.size());
  const int choices = static_cast<int>(p.capacity.size()) + 1;
  std::vector<int> pick(requests, -1);
  double best = 0;
  while (true) {
    double value = 0;
    if (IsFeasible(p, pick, &value)) best = std::max(best, value);
    int i = 0;
    while (i < requests && ++pick[i] == choices - 1) pick[i++] = -1;
    if (i == requests) break;
  }
  return best;
}

TEST(AssignOptimal, EqualsExhaustiveSearchWithUnitWeights) {
  std::mt19937 rng(20261123);
  for (int round = 0; round < 300; ++round) {
    const AssignmentProblem p = RandomProblem(rng, 1 + round % 6, 1 + round % 4, false);
    const AssignmentResult result = AssignOptimal(p);
    double value = 0;
    ASSERT_TRUE(IsFeasible(p, result.supporter_of, &value)) << "round " << round;
    EXPECT_NEAR(value, result.total_value, 1e-9);
    EXPECT_NEAR(result.total_value, Exhaustive(p), 1e-6) << "round " << round;
    EXPECT_TRUE(result.exact);
    EXPECT_GE(result.total_value + 1e-9, AssignGreedy(p).total_value);
  }
}

TEST(AssignOptimal, EqualsExhaustiveSearchWhenAllRequestsNeedTheSameUnits) {
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    AssignmentProblem p = RandomProblem(rng, 1 + round % 6, 1 + round % 4, false);
    for (int& u : p.units) u = 3;
    for (int& c : p.capacity) c *= 2;
    const AssignmentResult result = AssignOptimal(p);
    ASSERT_TRUE(IsFeasible(p, result.supporter_of, nullptr));
    EXPECT_NEAR(result.total_value, Exhaustive(p), 1e-6) << "round " << round;
  }
}

TEST(AssignOptimal, MixedUnitsAreFeasibleNeverBelowGreedyAndWithinTheBound) {
  std::mt19937 rng(42);
  int optimal = 0;
  const int rounds = 300;
  for (int round = 0; round < rounds; ++round) {
    const AssignmentProblem p = RandomProblem(rng, 1 + round % 6, 1 + round % 4, true);
    const AssignmentResult result = AssignOptimal(p);
    double value = 0;
    ASSERT_TRUE(IsFeasible(p, result.supporter_of, &value)) << "round " << round;
    const double best = Exhaustive(p);
    EXPECT_GE(result.total_value + 1e-9, AssignGreedy(p).total_value);
    EXPECT_LE(result.total_value, best + 1e-6);
    EXPECT_GE(result.upper_bound + 0.05, best) << "the bound bounds the optimum";
    if (result.exact) {
      EXPECT_NEAR(result.total_value, best, 1e-6);
    }
    if (result.total_value >= best - 1e-6) ++optimal;
  }
  // Documented, not promised: mixed units are solved as an LP relaxation plus repair.
  RecordProperty("optimal_share", std::to_string(optimal) + "/" + std::to_string(rounds));
}

TEST(AssignOptimal, BeatsGreedyWhereGreedyIsMyopic) {
  // Greedy gives supporter 0 to request 0 (value 10) and leaves request 1 without anyone; the
  // optimum gives request 0 supporter 1 (9) and request 1 supporter 0 (9).
  AssignmentProblem p;
  p.units = {1, 1};
  p.capacity = {1, 1};
  p.candidates = {{0, 0, 10}, {0, 1, 9}, {1, 0, 9}};
  EXPECT_EQ(AssignGreedy(p).total_value, 10);
  const AssignmentResult result = AssignOptimal(p);
  EXPECT_EQ(result.total_value, 18);
  EXPECT_EQ(result.assigned, 2);
  EXPECT_EQ(result.supporter_of, (std::vector<int>{1, 0}));
}

TEST(AssignOptimal, EmptyAndCapacityLessProblemsAssignNothing) {
  AssignmentProblem empty;
  EXPECT_EQ(AssignOptimal(empty).assigned, 0);
  AssignmentProblem full;
  full.units = {1};
  full.capacity = {0};
  full.candidates = {{0, 0, 50}};
  const AssignmentResult result = AssignOptimal(full);
  EXPECT_EQ(result.assigned, 0);
  EXPECT_EQ(result.supporter_of, std::vector<int>{-1});
}

}  // namespace
}  // namespace peerpath::matching
