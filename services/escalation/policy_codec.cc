#include "services/escalation/policy_codec.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/time_util.h"

namespace peerpath::escalation {
namespace {

v1::TimeLimit LimitToProto(const TimeLimit& limit) {
  v1::TimeLimit proto;
  if (limit.business_days > 0) {
    proto.set_business_days(limit.business_days);
  } else {
    const int64_t seconds = absl::ToInt64Seconds(limit.duration);
    proto.mutable_duration()->set_seconds(seconds);
  }
  return proto;
}

TimeLimit LimitFromProto(const v1::TimeLimit& proto, const std::string& field,
                         std::vector<FieldViolation>& problems) {
  TimeLimit limit;
  switch (proto.limit_case()) {
    case v1::TimeLimit::kDuration:
      limit.duration =
          absl::Seconds(proto.duration().seconds()) + absl::Nanoseconds(proto.duration().nanos());
      break;
    case v1::TimeLimit::kBusinessDays:
      limit.business_days = proto.business_days();
      if (limit.business_days <= 0) problems.push_back({field, "business_days must be 1 to 30"});
      break;
    default:
      problems.push_back({field, "required: a duration or business_days"});
  }
  return limit;
}

absl::StatusOr<absl::CivilDay> ParseDay(const std::string& text) {
  absl::CivilDay day;
  if (!absl::ParseCivilTime(text, &day)) {
    return absl::InvalidArgumentError(absl::StrCat("bad date ", text));
  }
  return day;
}

}  // namespace

v1::Target TargetToProto(const Target& target) {
  v1::Target proto;
  proto.set_kind(target.kind);
  proto.set_target_id(target.id);
  return proto;
}

Target TargetFromProto(const v1::Target& target) {
  return Target{target.kind(), target.target_id()};
}

v1::RoutingPolicy PolicyToProto(const RoutingPolicy& policy, const std::string& agency_id) {
  v1::RoutingPolicy proto;
  proto.set_policy_id(policy.policy_id);
  proto.set_agency_id(agency_id);
  proto.set_version(policy.version);
  proto.set_time_zone(policy.time_zone);
  proto.set_created_by(policy.created_by);
  if (policy.created_at != absl::Time())
    *proto.mutable_created_at() = ToProtoTimestamp(policy.created_at);
  for (const RoutingRule& rule : policy.rules) {
    v1::RoutingRule* r = proto.add_rules();
    r->set_category(rule.category);
    r->set_severity(rule.severity);
    *r->mutable_target() = TargetToProto(rule.target);
    *r->mutable_ack_deadline() = LimitToProto(rule.ack_deadline);
    *r->mutable_resolution_window() = LimitToProto(rule.resolution_window);
    r->set_business_hours_only(rule.business_hours_only);
    for (const EscalationStep& step : rule.escalation_chain) {
      v1::EscalationStep* s = r->add_escalation_chain();
      *s->mutable_target() = TargetToProto(step.target);
      *s->mutable_ack_deadline() = LimitToProto(step.ack_deadline);
    }
  }
  for (const BusinessWindow& w : policy.calendar.windows) {
    v1::BusinessHoursWindow* window = proto.add_business_hours();
    window->set_weekday(static_cast<v1::Weekday>(w.weekday));
    window->set_start_time(FormatLocalTime(w.start_minute));
    window->set_end_time(FormatLocalTime(w.end_minute));
  }
  for (const absl::CivilDay& day : policy.calendar.holidays) {
    common::v1::Date* date = proto.add_holidays();
    date->set_year(static_cast<int32_t>(day.year()));
    date->set_month(day.month());
    date->set_day(day.day());
  }
  return proto;
}

RoutingPolicy PolicyFromProto(const v1::RoutingPolicy& proto,
                              std::vector<FieldViolation>& problems) {
  RoutingPolicy policy;
  policy.version = proto.version();
  policy.time_zone = proto.time_zone();
  if (!absl::LoadTimeZone(proto.time_zone(), &policy.calendar.zone) || proto.time_zone().empty()) {
    problems.push_back({"policy.time_zone",
                        absl::StrCat("'", proto.time_zone(), "' is not an IANA time zone name")});
  }
  for (int i = 0; i < proto.business_hours_size(); ++i) {
    const auto& w = proto.business_hours(i);
    const std::string field = absl::StrCat("policy.business_hours[", i, "]");
    auto start = ParseLocalTime(w.start_time());
    auto end = ParseLocalTime(w.end_time());
    if (w.weekday() < v1::WEEKDAY_MONDAY || w.weekday() > v1::WEEKDAY_SUNDAY) {
      problems.push_back({field + ".weekday", "required, MONDAY to SUNDAY"});
    }
    if (!start.ok() || *start >= 1440) {
      problems.push_back({field + ".start_time", "HH:MM from 00:00 to 23:59"});
    }
    if (!end.ok()) problems.push_back({field + ".end_time", "HH:MM up to 24:00"});
    if (start.ok() && end.ok() && *end <= *start) {
      problems.push_back({field + ".end_time", "must be after start_time"});
    }
    if (start.ok() && end.ok()) policy.calendar.windows.push_back({w.weekday(), *start, *end});
  }
  if (proto.business_hours_size() > 28) {
    problems.push_back({"policy.business_hours", "at most 7 × 4 windows"});
  }
  for (size_t a = 0; a < policy.calendar.windows.size(); ++a) {
    for (size_t b = a + 1; b < policy.calendar.windows.size(); ++b) {
      const auto& x = policy.calendar.windows[a];
      const auto& y = policy.calendar.windows[b];
      if (x.weekday == y.weekday && x.start_minute < y.end_minute &&
          y.start_minute < x.end_minute) {
        problems.push_back({absl::StrCat("policy.business_hours[", b, "]"),
                            "overlaps another window of the same day"});
      }
    }
  }
  if (proto.holidays_size() > 100) problems.push_back({"policy.holidays", "at most 100"});
  for (int i = 0; i < proto.holidays_size(); ++i) {
    const auto& d = proto.holidays(i);
    const absl::CivilDay day(d.year(), d.month(), d.day());
    if (day.year() != d.year() || day.month() != d.month() || day.day() != d.day()) {
      problems.push_back({absl::StrCat("policy.holidays[", i, "]"), "not a calendar date"});
    } else {
      policy.calendar.holidays.insert(day);
    }
  }
  for (int i = 0; i < proto.rules_size(); ++i) {
    const auto& r = proto.rules(i);
    const std::string field = absl::StrCat("policy.rules[", i, "]");
    RoutingRule rule;
    rule.category = r.category();
    rule.severity = r.severity();
    rule.target = TargetFromProto(r.target());
    rule.ack_deadline = LimitFromProto(r.ack_deadline(), field + ".ack_deadline", problems);
    rule.resolution_window =
        LimitFromProto(r.resolution_window(), field + ".resolution_window", problems);
    rule.business_hours_only = r.business_hours_only();
    for (int s = 0; s < r.escalation_chain_size(); ++s) {
      const auto& step = r.escalation_chain(s);
      rule.escalation_chain.push_back(
          {TargetFromProto(step.target()),
           LimitFromProto(step.ack_deadline(),
                          absl::StrCat(field, ".escalation_chain[", s, "].ack_deadline"),
                          problems)});
    }
    policy.rules.push_back(std::move(rule));
  }
  return policy;
}

StoredPolicyText PolicyToStored(const RoutingPolicy& policy) {
  StoredPolicyText stored;
  const v1::RoutingPolicy proto = PolicyToProto(policy, "");
  std::vector<std::string> rules;
  for (const auto& rule : proto.rules()) {
    std::string json;
    (void)google::protobuf::util::MessageToJsonString(rule, &json);
    rules.push_back(std::move(json));
  }
  stored.rules_json = absl::StrCat("[", absl::StrJoin(rules, ","), "]");
  nlohmann::json hours = nlohmann::json::array();
  for (const BusinessWindow& w : policy.calendar.windows) {
    hours.push_back({{"weekday", w.weekday},
                     {"start", FormatLocalTime(w.start_minute)},
                     {"end", FormatLocalTime(w.end_minute)}});
  }
  stored.business_hours_json = hours.dump();
  std::vector<std::string> days;
  for (const absl::CivilDay& day : policy.calendar.holidays) {
    days.push_back(absl::FormatCivilTime(day));
  }
  stored.holidays = absl::StrCat("{", absl::StrJoin(days, ","), "}");
  return stored;
}

absl::StatusOr<RoutingPolicy> PolicyFromStored(const std::string& rules_json,
                                               const std::string& time_zone,
                                               const std::string& business_hours_json,
                                               const std::string& holidays_csv) {
  v1::RoutingPolicy proto;
  proto.set_time_zone(time_zone);
  try {
    for (const auto& rule : nlohmann::json::parse(rules_json)) {
      auto status = google::protobuf::util::JsonStringToMessage(rule.dump(), proto.add_rules());
      if (!status.ok()) return absl::InternalError("stored routing rule unreadable");
    }
    for (const auto& w : nlohmann::json::parse(business_hours_json)) {
      v1::BusinessHoursWindow* window = proto.add_business_hours();
      window->set_weekday(static_cast<v1::Weekday>(w.at("weekday").get<int>()));
      window->set_start_time(w.at("start").get<std::string>());
      window->set_end_time(w.at("end").get<std::string>());
    }
  } catch (const std::exception&) {
    return absl::InternalError("stored routing policy unreadable");
  }
  for (absl::string_view text : absl::StrSplit(holidays_csv, ',', absl::SkipEmpty())) {
    auto day = ParseDay(std::string(text));
    if (!day.ok()) return absl::InternalError("stored holiday unreadable");
    common::v1::Date* date = proto.add_holidays();
    date->set_year(static_cast<int32_t>(day->year()));
    date->set_month(day->month());
    date->set_day(day->day());
  }
  std::vector<FieldViolation> problems;
  RoutingPolicy policy = PolicyFromProto(proto, problems);
  if (!problems.empty()) {
    return absl::InternalError(absl::StrCat("stored routing policy invalid: ", problems[0].field));
  }
  return policy;
}

}  // namespace peerpath::escalation
