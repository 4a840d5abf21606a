#pragma once

// Routing rules of the escalation service as plain functions over plain structs: which target a
// concern of a category × severity goes to, at which level, with which deadline; who may act for
// a target; the built-in default policy. No gRPC calls, no SQL; time is passed in.

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "peerpath/common/v1/common.pb.h"
#include "peerpath/escalation/v1/escalation.pb.h"
#include "services/escalation/deadlines.h"

namespace peerpath::escalation {

using Category = common::v1::ConcernCategory;
using Severity = common::v1::ConcernSeverity;
using TargetKind = v1::TargetKind;

inline constexpr char kClinicalOnCallTeam[] = "clinical-on-call";
inline constexpr char kCaseManagementTeam[] = "case-management";

struct Target {
  TargetKind kind = v1::TARGET_KIND_UNSPECIFIED;
  std::string id;  // Team id, or the person's subject (empty in a policy for person kinds).
  bool operator==(const Target&) const = default;
};

bool IsPersonKind(TargetKind kind);
bool IsClinicalKind(TargetKind kind);

struct EscalationStep {
  Target target;
  TimeLimit ack_deadline;
};

struct RoutingRule {
  Category category = common::v1::CONCERN_CATEGORY_UNSPECIFIED;
  Severity severity = common::v1::CONCERN_SEVERITY_UNSPECIFIED;
  Target target;  // Level 0.
  TimeLimit ack_deadline;
  TimeLimit resolution_window;
  bool business_hours_only = false;
  std::vector<EscalationStep> escalation_chain;  // Levels 1..n.

  int level_count() const { return 1 + static_cast<int>(escalation_chain.size()); }
  const Target& TargetAt(int level) const;
  const TimeLimit& AckLimitAt(int level) const;
};

struct RoutingPolicy {
  std::string policy_id;
  int version = 0;
  std::string time_zone;
  // A program admin set the zone in this policy (it no longer follows the check-in service's
  // program policy).
  bool time_zone_set_by_admin = false;
  BusinessCalendar calendar;
  std::vector<RoutingRule> rules;  // One per category × severity.
  std::string created_by;
  absl::Time created_at;
};

// The built-in version 1 of every agency (RoutingPolicy in escalation.proto).
RoutingPolicy DefaultPolicy(const std::string& time_zone, absl::TimeZone zone);

// The rule for a category × severity; nullptr when the policy has none (never for a valid one).
const RoutingRule* RuleFor(const RoutingPolicy& policy, Category category, Severity severity);

// What this service knows, per concern, about the people a person target may resolve to.
struct PersonDirectory {
  std::optional<std::string> receiving_clinician;  // Of the concern's enrollment.
  std::optional<std::string> supervisor;           // Of the peer supporter concerned.
  std::set<std::string> peer_supporters;           // People known to be peer supporters.
};

// Where a concern goes now.
struct RoutedLevel {
  int level = 0;
  Target target;
  std::vector<int> skipped_levels;  // Person targets that could not be resolved on the way.
  absl::Time notify_at;             // The target is notified and its clock starts then.
  absl::Time ack_deadline;
};

// Routes to the first resolvable level at or after `first_level`, starting its clock at `now`
// (or, for a business-hours-only rule, at the next start of business hours). NOT_FOUND when no
// level at or after `first_level` can be resolved (the chain is exhausted). For an
// immediate-safety concern the target must be clinical: FAILED_PRECONDITION otherwise, since a
// critical immediate-safety concern can never have a peer supporter as its only owner.
absl::StatusOr<RoutedLevel> RouteFrom(const RoutingRule& rule, int first_level,
                                      const PersonDirectory& people,
                                      const BusinessCalendar& calendar, absl::Time now);

// The resolution deadline of a concern acknowledged at `acknowledged_at`.
absl::Time ResolutionDeadline(const RoutingRule& rule, const BusinessCalendar& calendar,
                              absl::Time acknowledged_at);

// The caller as the routing rules see it.
struct Actor {
  std::string subject;
  bool clinician = false;
  bool case_manager = false;
  bool supervisor = false;
  bool peer_supporter = false;
};

// True when `actor` acts for `target`: a clinician for a clinical on-call team, a case manager for
// a case-management team, the named person for a person target.
bool ActsFor(const Actor& actor, const Target& target);

// The lowest level after `current_level` of `rule` whose (team) target `actor` acts for.
std::optional<int> HigherLevelFor(const RoutingRule& rule, int current_level, const Actor& actor);

// Every problem of a policy (INVALID_ARGUMENT rules), field paths as in UpdateRoutingPolicy.
std::vector<FieldViolation> ValidatePolicy(const RoutingPolicy& policy);
// The safety rules of immediate-safety routing; an empty string when they hold.
std::string SafetyRuleViolation(const RoutingPolicy& policy);

}  // namespace peerpath::escalation
