#include "services/escalation/routing.h"

#include <map>

#include "absl/strings/str_cat.h"

namespace peerpath::escalation {
namespace {

using common::v1::CONCERN_CATEGORY_BASIC_NEEDS;
using common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING;
using common::v1::CONCERN_CATEGORY_DISENGAGEMENT;
using common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY;
using common::v1::CONCERN_CATEGORY_ROLE_BOUNDARY;
using common::v1::CONCERN_CATEGORY_SUPPORTER_WELLBEING;
using common::v1::CONCERN_CATEGORY_WELLBEING_DECLINE;
using common::v1::CONCERN_SEVERITY_CRITICAL;
using common::v1::CONCERN_SEVERITY_ROUTINE;
using common::v1::CONCERN_SEVERITY_URGENT;

TimeLimit Elapsed(absl::Duration d) {
  TimeLimit limit;
  limit.duration = d;
  return limit;
}
TimeLimit BusinessDays(int days) {
  TimeLimit limit;
  limit.business_days = days;
  return limit;
}

std::optional<std::string> Resolve(const Target& target, const PersonDirectory& people) {
  std::optional<std::string> person;
  switch (target.kind) {
    case v1::TARGET_KIND_CLINICAL_ON_CALL:
    case v1::TARGET_KIND_CASE_MANAGEMENT_TEAM:
      return target.id.empty() ? std::nullopt : std::optional<std::string>(target.id);
    case v1::TARGET_KIND_RECEIVING_CLINICIAN:
      person = target.id.empty() ? people.receiving_clinician : target.id;
      break;
    case v1::TARGET_KIND_SUPPORTER_SUPERVISOR:
      person = target.id.empty() ? people.supervisor : target.id;
      break;
    default:
      return std::nullopt;
  }
  // Peer supporters raise concerns but never hold them.
  if (!person || person->empty() || people.peer_supporters.contains(*person)) return std::nullopt;
  return person;
}

bool ValidLimit(const TimeLimit& limit, bool business_hours_only) {
  if (limit.business_days > 0) return business_hours_only && limit.business_days <= 30;
  return limit.duration >= absl::Minutes(1) && limit.duration <= absl::Hours(24 * 30);
}

}  // namespace

bool IsPersonKind(TargetKind kind) {
  return kind == v1::TARGET_KIND_RECEIVING_CLINICIAN ||
         kind == v1::TARGET_KIND_SUPPORTER_SUPERVISOR;
}

bool IsClinicalKind(TargetKind kind) {
  return kind == v1::TARGET_KIND_CLINICAL_ON_CALL || kind == v1::TARGET_KIND_RECEIVING_CLINICIAN;
}

const Target& RoutingRule::TargetAt(int level) const {
  return level == 0 ? target : escalation_chain[level - 1].target;
}

const TimeLimit& RoutingRule::AckLimitAt(int level) const {
  return level == 0 ? ack_deadline : escalation_chain[level - 1].ack_deadline;
}

RoutingPolicy DefaultPolicy(const std::string& time_zone, absl::TimeZone zone) {
  RoutingPolicy policy;
  policy.version = 1;
  policy.time_zone = time_zone;
  policy.calendar = DefaultCalendar(zone);
  policy.created_by = "system:default";
  const Target on_call{v1::TARGET_KIND_CLINICAL_ON_CALL, kClinicalOnCallTeam};
  const Target case_management{v1::TARGET_KIND_CASE_MANAGEMENT_TEAM, kCaseManagementTeam};
  const Target receiving{v1::TARGET_KIND_RECEIVING_CLINICIAN, ""};
  const Target supervisor{v1::TARGET_KIND_SUPPORTER_SUPERVISOR, ""};
  for (Category category : {CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_CATEGORY_CLINICAL_WORSENING,
                            CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_CATEGORY_DISENGAGEMENT,
                            CONCERN_CATEGORY_ROLE_BOUNDARY, CONCERN_CATEGORY_SUPPORTER_WELLBEING,
                            CONCERN_CATEGORY_WELLBEING_DECLINE}) {
    for (Severity severity :
         {CONCERN_SEVERITY_ROUTINE, CONCERN_SEVERITY_URGENT, CONCERN_SEVERITY_CRITICAL}) {
      RoutingRule rule;
      rule.category = category;
      rule.severity = severity;
      switch (severity) {
        case CONCERN_SEVERITY_CRITICAL:
          rule.ack_deadline = Elapsed(absl::Minutes(15));
          rule.resolution_window = Elapsed(absl::Hours(4));
          break;
        case CONCERN_SEVERITY_URGENT:
          rule.ack_deadline = Elapsed(absl::Hours(4));
          rule.resolution_window = Elapsed(absl::Hours(48));
          break;
        default:
          if (category == CONCERN_CATEGORY_IMMEDIATE_SAFETY) {
            // Never business-hours-only: safety does not wait for Monday.
            rule.ack_deadline = Elapsed(absl::Hours(24));
            rule.resolution_window = Elapsed(absl::Hours(24 * 7));
          } else {
            rule.business_hours_only = true;
            rule.ack_deadline = BusinessDays(3);
            rule.resolution_window = BusinessDays(10);
          }
      }
      std::vector<Target> levels;
      switch (category) {
        case CONCERN_CATEGORY_IMMEDIATE_SAFETY:
        case CONCERN_CATEGORY_CLINICAL_WORSENING:
        case CONCERN_CATEGORY_WELLBEING_DECLINE:
          if (severity == CONCERN_SEVERITY_CRITICAL) {
            levels = {on_call};
          } else {
            levels = {receiving, on_call};
          }
          break;
        case CONCERN_CATEGORY_BASIC_NEEDS:
        case CONCERN_CATEGORY_DISENGAGEMENT:
          levels = {case_management, supervisor};
          break;
        default:
          levels = {supervisor, case_management};
      }
      rule.target = levels[0];
      for (size_t i = 1; i < levels.size(); ++i) {
        rule.escalation_chain.push_back({levels[i], rule.ack_deadline});
      }
      policy.rules.push_back(rule);
    }
  }
  return policy;
}

const RoutingRule* RuleFor(const RoutingPolicy& policy, Category category, Severity severity) {
  for (const RoutingRule& rule : policy.rules) {
    if (rule.category == category && rule.severity == severity) return &rule;
  }
  return nullptr;
}

absl::StatusOr<RoutedLevel> RouteFrom(const RoutingRule& rule, int first_level,
                                      const PersonDirectory& people,
                                      const BusinessCalendar& calendar, absl::Time now) {
  RoutedLevel routed;
  for (int level = first_level; level < rule.level_count(); ++level) {
    std::optional<std::string> id = Resolve(rule.TargetAt(level), people);
    if (!id) {
      routed.skipped_levels.push_back(level);
      continue;
    }
    routed.level = level;
    routed.target = Target{rule.TargetAt(level).kind, *id};
    if (rule.category == CONCERN_CATEGORY_IMMEDIATE_SAFETY && !IsClinicalKind(routed.target.kind)) {
      return absl::FailedPreconditionError(
          "an immediate-safety concern is always routed to clinical review; a critical "
          "immediate-safety concern can never have a peer supporter as its only owner");
    }
    routed.notify_at = NotifyAt(rule.business_hours_only, calendar, now);
    routed.ack_deadline =
        DeadlineAfter(rule.AckLimitAt(level), routed.notify_at, rule.business_hours_only, calendar);
    return routed;
  }
  return absl::NotFoundError(
      absl::StrCat("no resolvable target at or after level ", first_level, " (chain exhausted)"));
}

absl::Time ResolutionDeadline(const RoutingRule& rule, const BusinessCalendar& calendar,
                              absl::Time acknowledged_at) {
  return DeadlineAfter(rule.resolution_window, acknowledged_at, rule.business_hours_only, calendar);
}

bool ActsFor(const Actor& actor, const Target& target) {
  switch (target.kind) {
    case v1::TARGET_KIND_CLINICAL_ON_CALL:
      return actor.clinician;
    case v1::TARGET_KIND_CASE_MANAGEMENT_TEAM:
      return actor.case_manager;
    case v1::TARGET_KIND_RECEIVING_CLINICIAN:
    case v1::TARGET_KIND_SUPPORTER_SUPERVISOR:
      return !target.id.empty() && target.id == actor.subject &&
             (actor.clinician || actor.supervisor || actor.case_manager);
    default:
      return false;
  }
}

std::optional<int> HigherLevelFor(const RoutingRule& rule, int current_level, const Actor& actor) {
  for (int level = current_level + 1; level < rule.level_count(); ++level) {
    const Target& target = rule.TargetAt(level);
    // Person targets of later levels are resolved only when the concern gets there.
    if (!IsPersonKind(target.kind) && ActsFor(actor, target)) return level;
  }
  return std::nullopt;
}

std::vector<FieldViolation> ValidatePolicy(const RoutingPolicy& policy) {
  std::vector<FieldViolation> violations;
  std::map<std::pair<int, int>, int> seen;
  bool any_business_hours_only = false;
  for (size_t i = 0; i < policy.rules.size(); ++i) {
    const RoutingRule& rule = policy.rules[i];
    const std::string path = absl::StrCat("policy.rules[", i, "]");
    if (rule.category == common::v1::CONCERN_CATEGORY_UNSPECIFIED) {
      violations.push_back({path + ".category", "required"});
    }
    if (rule.severity == common::v1::CONCERN_SEVERITY_UNSPECIFIED) {
      violations.push_back({path + ".severity", "required"});
    }
    if (++seen[{rule.category, rule.severity}] == 2) {
      violations.push_back({path, "more than one rule for this category × severity"});
    }
    if (rule.business_hours_only) {
      any_business_hours_only = true;
      if (rule.severity != CONCERN_SEVERITY_ROUTINE) {
        violations.push_back(
            {path + ".business_hours_only", "only ROUTINE rules may be business-hours-only"});
      }
    }
    auto check_target = [&](const Target& target, const std::string& field) {
      if (target.kind == v1::TARGET_KIND_UNSPECIFIED) {
        violations.push_back({field + ".kind", "required"});
      } else if (IsPersonKind(target.kind) && !target.id.empty()) {
        violations.push_back({field + ".target_id", "a person target has no id in a policy"});
      } else if (!IsPersonKind(target.kind) && target.id.empty()) {
        violations.push_back({field + ".target_id", "a team target needs its team id"});
      }
    };
    check_target(rule.target, path + ".target");
    if (!ValidLimit(rule.ack_deadline, rule.business_hours_only)) {
      violations.push_back({path + ".ack_deadline",
                            "1 minute to 30 days, or 1 to 30 business days on a "
                            "business-hours-only rule"});
    }
    if (!ValidLimit(rule.resolution_window, rule.business_hours_only)) {
      violations.push_back({path + ".resolution_window",
                            "1 minute to 30 days, or 1 to 30 business days on a "
                            "business-hours-only rule"});
    }
    if (rule.escalation_chain.size() > 20) {
      violations.push_back({path + ".escalation_chain", "at most 20 steps"});
    }
    bool has_team = !IsPersonKind(rule.target.kind);
    for (size_t s = 0; s < rule.escalation_chain.size(); ++s) {
      const std::string step = absl::StrCat(path, ".escalation_chain[", s, "]");
      check_target(rule.escalation_chain[s].target, step + ".target");
      if (!IsPersonKind(rule.escalation_chain[s].target.kind)) has_team = true;
      if (!ValidLimit(rule.escalation_chain[s].ack_deadline, rule.business_hours_only)) {
        violations.push_back({step + ".ack_deadline", "out of range"});
      }
    }
    if (!has_team) {
      violations.push_back({path + ".escalation_chain",
                            "a rule whose level-0 target is a person needs a team target in its "
                            "chain, so every concern can be routed"});
    }
  }
  if (any_business_hours_only && policy.calendar.windows.empty()) {
    violations.push_back(
        {"policy.business_hours", "required when any rule is business-hours-only"});
  }
  return violations;
}

std::string SafetyRuleViolation(const RoutingPolicy& policy) {
  for (const RoutingRule& rule : policy.rules) {
    if (rule.category != CONCERN_CATEGORY_IMMEDIATE_SAFETY) continue;
    bool on_call = rule.target.kind == v1::TARGET_KIND_CLINICAL_ON_CALL;
    for (const EscalationStep& step : rule.escalation_chain) {
      if (step.target.kind == v1::TARGET_KIND_CLINICAL_ON_CALL) on_call = true;
    }
    if (!IsClinicalKind(rule.target.kind) || !on_call || rule.business_hours_only) {
      return "every immediate-safety rule must route to clinical review (a clinical level-0 "
             "target and a clinical on-call team in its chain) and must not be "
             "business-hours-only";
    }
  }
  return "";
}

}  // namespace peerpath::escalation
