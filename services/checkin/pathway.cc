#include "services/checkin/pathway.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/civil_time.h"

namespace peerpath::checkin {
namespace {

using common::v1::ConcernCategory;
using common::v1::ConcernSeverity;
using v1::FieldDefinition;
using v1::PathwayVersion;

constexpr int kDefaultTextMaxLength = 2000;

// Builders for the default pathways: the definitions read like the seeds' lists.
class PathwayBuilder {
 public:
  PathwayBuilder(const char* key, const char* display_name, const char* description,
                 int acuity_units) {
    p_.set_pathway_key(key);
    p_.set_version(1);
    p_.set_display_name(display_name);
    p_.set_description(description);
    p_.set_acuity_units(acuity_units);
    p_.set_missed_contact_severity(common::v1::CONCERN_SEVERITY_ROUTINE);
    p_.set_published_by(kDefaultPublisher);
  }
  PathwayBuilder& Text(const char* key, const char* label, bool required) {
    Field(key, label, required)->mutable_text_field();
    return *this;
  }
  PathwayBuilder& Bool(const char* key, const char* label, bool required) {
    Field(key, label, required)->mutable_bool_field();
    return *this;
  }
  PathwayBuilder& Date(const char* key, const char* label, bool required) {
    Field(key, label, required)->mutable_date_field();
    return *this;
  }
  PathwayBuilder& Enum(const char* key, const char* label, bool required,
                       std::vector<std::pair<const char*, const char*>> options) {
    auto* spec = Field(key, label, required)->mutable_enum_field();
    for (const auto& [option_key, option_label] : options) {
      auto* option = spec->add_options();
      option->set_key(option_key);
      option->set_label(option_label);
    }
    return *this;
  }
  PathwayBuilder& Scale(const char* key, const char* label, bool required, int min, int max,
                        const char* min_label, const char* max_label) {
    auto* spec = Field(key, label, required)->mutable_scale_field();
    spec->set_min(min);
    spec->set_max(max);
    spec->set_min_label(min_label);
    spec->set_max_label(max_label);
    return *this;
  }
  PathwayBuilder& ConsentGate(const char* name, const char* description) {
    auto* gate = p_.add_gates();
    gate->set_consent_gate(name);
    gate->set_description(description);
    return *this;
  }
  PathwayBuilder& OwnerGate(v1::OwnerGate owner_gate, const char* description) {
    auto* gate = p_.add_gates();
    gate->set_owner_gate(owner_gate);
    gate->set_description(description);
    return *this;
  }
  // A rule firing when `field` is one of `options`.
  PathwayBuilder& EnumRule(const char* rule_id, const char* description, const char* field,
                           std::vector<const char*> options, ConcernCategory category,
                           ConcernSeverity severity) {
    auto* rule = p_.add_routing_rules();
    rule->set_rule_id(rule_id);
    rule->set_description(description);
    auto* condition = rule->add_all_of();
    condition->set_field_key(field);
    for (const char* option : options) condition->mutable_enum_in()->add_keys(option);
    rule->set_category(category);
    rule->set_severity(severity);
    rule->set_stops_routine_engagement(category == common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
    return *this;
  }
  PathwayBuilder& MissedAppointment(const char* rule_id, v1::AppointmentKind kind,
                                    ConcernCategory category, ConcernSeverity severity) {
    auto* rule = p_.add_missed_appointment_rules();
    rule->set_rule_id(rule_id);
    rule->set_appointment_kind(kind);
    rule->set_category(category);
    rule->set_severity(severity);
    return *this;
  }
  PathwayBuilder& MissedContactSeverity(ConcernSeverity severity) {
    p_.set_missed_contact_severity(severity);
    return *this;
  }
  PathwayBuilder& Wellbeing(const char* field, ConcernSeverity severity) {
    p_.set_wellbeing_field_key(field);
    p_.set_wellbeing_decline_severity(severity);
    return *this;
  }
  PathwayBuilder& RequiresEndOrReview() {
    p_.set_requires_end_or_review(true);
    return *this;
  }
  PathwayVersion Build() const { return p_; }

 private:
  FieldDefinition* Field(const char* key, const char* label, bool required) {
    auto* field = p_.add_fields();
    field->set_key(key);
    field->set_label(label);
    field->set_required(required);
    return field;
  }
  PathwayVersion p_;
};

constexpr bool kRequired = true;
constexpr bool kOptional = false;
using enum common::v1::ConcernCategory;
using enum common::v1::ConcernSeverity;

std::vector<PathwayVersion> BuildDefaults() {
  std::vector<PathwayVersion> out;
  out.push_back(
      PathwayBuilder("early_engagement", "Early engagement",
                     "After intake, before the first therapy appointment: peer support as an "
                     "engagement option.",
                     2)
          .Enum("peer_support_offer", "Peer support offer", kRequired,
                {{"offered", "Offered"}, {"not_offered", "Not offered"}})
          .Enum("person_preference", "Person preference", kRequired,
                {{"wants_peer_support", "Wants peer support"},
                 {"declines", "Declines"},
                 {"undecided", "Undecided"}})
          .Enum("engagement_barrier_identified", "Engagement barrier identified", kRequired,
                {{"none", "None"},
                 {"unsure_what_to_expect", "Unsure what to expect"},
                 {"overwhelmed_by_process", "Overwhelmed by the process"},
                 {"mistrust_of_services", "Mistrust of services"},
                 {"practical_barrier", "Practical barrier"},
                 {"other", "Other"}})
          .Bool("peer_contact_completed", "Peer contact completed", kRequired)
          .Bool("information_shared_with_consent", "Information shared with consent", kRequired)
          .Enum("next_appointment_status", "Next appointment status", kRequired,
                {{"not_scheduled", "Not scheduled"},
                 {"scheduled", "Scheduled"},
                 {"attended", "Attended"},
                 {"missed", "Missed"},
                 {"cancelled", "Cancelled"}})
          .Enum("follow_up_action", "Follow-up action", kRequired,
                {{"none", "None"},
                 {"continue_peer_support", "Continue peer support"},
                 {"support_first_appointment", "Support the first appointment"},
                 {"refer_to_case_manager", "Refer to the case manager"},
                 {"clinical_review_safety_concern", "Clinical review: safety concern"}})
          .ConsentGate("consent_information_sharing",
                       "Documented consent for relevant information-sharing")
          .OwnerGate(v1::OWNER_GATE_APPOINTMENT_OWNER, "Clear appointment ownership")
          .OwnerGate(v1::OWNER_GATE_ESCALATION_ROUTE,
                     "A route for the peer specialist to escalate concerns")
          .EnumRule("immediate_safety",
                    "A disclosed immediate safety concern routes to clinical review rather than "
                    "routine engagement support",
                    "follow_up_action", {"clinical_review_safety_concern"},
                    CONCERN_CATEGORY_IMMEDIATE_SAFETY, CONCERN_SEVERITY_CRITICAL)
          .MissedAppointment("missed_first_appointment", v1::APPOINTMENT_KIND_FIRST_APPOINTMENT,
                             CONCERN_CATEGORY_DISENGAGEMENT, CONCERN_SEVERITY_ROUTINE)
          .Build());
  out.push_back(
      PathwayBuilder("step_down", "Step-down",
                     "From intensive to standard care: peer support as part of a time-limited or "
                     "reviewable step-down plan.",
                     2)
          .Text("step_down_reason", "Step-down reason", kRequired)
          .Text("peer_support_purpose", "Peer support purpose", kRequired)
          .Text("recovery_goals", "Recovery goals", kRequired)
          .Text("warning_signs", "Warning signs", kRequired)
          .Text("community_connection_plan", "Community connection plan", kRequired)
          .Date("clinical_review_date", "Clinical review date", kRequired)
          .Text("escalation_route", "Escalation route", kRequired)
          .OwnerGate(v1::OWNER_GATE_RECEIVING_TEAM_CONFIRMED, "Receiving-pathway confirmation")
          .ConsentGate("agreement_to_peer_involvement", "Person agreement to peer involvement")
          .OwnerGate(v1::OWNER_GATE_ESCALATION_ROUTE,
                     "Documented escalation instructions if concerns increase")
          .MissedAppointment("missed_therapy", v1::APPOINTMENT_KIND_THERAPY,
                             CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT)
          .MissedAppointment("missed_clinical_review", v1::APPOINTMENT_KIND_CLINICAL_REVIEW,
                             CONCERN_CATEGORY_CLINICAL_WORSENING, CONCERN_SEVERITY_URGENT)
          .RequiresEndOrReview()
          .Build());
  out.push_back(
      PathwayBuilder("crisis_transition", "Crisis transition",
                     "After crisis stabilization: peer support as a transition aid alongside, "
                     "never instead of, clinical follow-up.",
                     3)
          .Enum("transition_source", "Transition source", kRequired,
                {{"crisis_stabilization", "Crisis stabilization"},
                 {"inpatient", "Inpatient"},
                 {"emergency_department", "Emergency department"},
                 {"mobile_crisis", "Mobile crisis"},
                 {"other", "Other"}})
          .Text("peer_role", "Peer role", kRequired)
          .Enum("consent_status", "Consent status", kRequired,
                {{"full", "Full"}, {"limited", "Limited"}, {"none", "None"}})
          .Date("first_appointment_date", "First appointment date", kRequired)
          .Enum("engagement_concern", "Engagement concern", kRequired,
                {{"none", "None"},
                 {"may_cancel", "May cancel"},
                 {"anxiety_about_attending", "Anxiety about attending"},
                 {"practical_barrier", "Practical barrier"},
                 {"other", "Other"}})
          .Enum("peer_contact_outcome", "Peer contact outcome", kRequired,
                {{"reached", "Reached"},
                 {"no_answer", "No answer"},
                 {"left_message", "Left message"},
                 {"wrong_number", "Wrong number"}})
          .Enum("concerns_routed", "Concerns routed", kRequired,
                {{"none", "None"},
                 {"immediate_safety", "Immediate safety"},
                 {"clinical_worsening", "Clinical worsening"},
                 {"basic_needs", "Basic needs"}})
          .Bool("receiving_clinician_notified", "Receiving clinician notified", kRequired)
          .OwnerGate(v1::OWNER_GATE_RECEIVING_TEAM_CONFIRMED,
                     "Confirmed receiving-team responsibility")
          .ConsentGate("consent_aligned_communication", "Consent-aligned communication")
          .OwnerGate(v1::OWNER_GATE_ESCALATION_ROUTE,
                     "A clinical escalation route if safety concerns are disclosed")
          .OwnerGate(v1::OWNER_GATE_CLINICAL_FOLLOW_UP_OWNER,
                     "Peer support cannot be the only follow-up where recent crisis risk remains "
                     "active")
          .EnumRule("immediate_safety", "Immediate safety concern routed", "concerns_routed",
                    {"immediate_safety"}, CONCERN_CATEGORY_IMMEDIATE_SAFETY,
                    CONCERN_SEVERITY_CRITICAL)
          .EnumRule("clinical_worsening", "Clinical worsening routed", "concerns_routed",
                    {"clinical_worsening"}, CONCERN_CATEGORY_CLINICAL_WORSENING,
                    CONCERN_SEVERITY_URGENT)
          .EnumRule("basic_needs", "Basic needs routed", "concerns_routed", {"basic_needs"},
                    CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_ROUTINE)
          .MissedAppointment("missed_first_appointment", v1::APPOINTMENT_KIND_FIRST_APPOINTMENT,
                             CONCERN_CATEGORY_DISENGAGEMENT, CONCERN_SEVERITY_URGENT)
          .MissedContactSeverity(CONCERN_SEVERITY_URGENT)
          .Build());
  out.push_back(
      PathwayBuilder("structured_checkin", "Structured check-in",
                     "Regular, intentional peer check-ins focused on connection, encouragement "
                     "and early awareness of wellbeing changes.",
                     1)
          .Text("opening_question", "Opening question", kOptional)
          .Text("current_stressors", "Current stressors", kOptional)
          .Text("current_supports", "Current supports", kOptional)
          .Scale("wellbeing", "Wellbeing", kRequired, 1, 5, "languishing", "flourishing")
          .Bool("encouragement_to_seek_support_given", "Encouragement to seek support given",
                kRequired)
          .Enum("concern_noticed", "Concern noticed", kRequired,
                {{"none", "None"},
                 {"immediate_safety", "Immediate safety"},
                 {"clinical_worsening", "Clinical worsening"},
                 {"basic_needs", "Basic needs"},
                 {"role_boundary", "Role boundary"}})
          .EnumRule("immediate_safety", "Immediate safety concern noticed", "concern_noticed",
                    {"immediate_safety"}, CONCERN_CATEGORY_IMMEDIATE_SAFETY,
                    CONCERN_SEVERITY_CRITICAL)
          .EnumRule("clinical_worsening", "Clinical worsening noticed", "concern_noticed",
                    {"clinical_worsening"}, CONCERN_CATEGORY_CLINICAL_WORSENING,
                    CONCERN_SEVERITY_URGENT)
          .EnumRule("basic_needs", "Basic needs noticed", "concern_noticed", {"basic_needs"},
                    CONCERN_CATEGORY_BASIC_NEEDS, CONCERN_SEVERITY_ROUTINE)
          .EnumRule("role_boundary", "Role-boundary issue noticed", "concern_noticed",
                    {"role_boundary"}, CONCERN_CATEGORY_ROLE_BOUNDARY, CONCERN_SEVERITY_ROUTINE)
          .Wellbeing("wellbeing", CONCERN_SEVERITY_ROUTINE)
          .Build());
  return out;
}

const char* TypeName(FieldDefinition::SpecCase spec) {
  switch (spec) {
    case FieldDefinition::kTextField:
      return "text";
    case FieldDefinition::kBoolField:
      return "bool";
    case FieldDefinition::kEnumField:
      return "enum";
    case FieldDefinition::kDateField:
      return "date";
    case FieldDefinition::kScaleField:
      return "scale";
    case FieldDefinition::SPEC_NOT_SET:
      break;
  }
  return "unknown";
}

FieldDefinition::SpecCase ExpectedSpec(v1::Answer::ValueCase value) {
  switch (value) {
    case v1::Answer::kTextValue:
      return FieldDefinition::kTextField;
    case v1::Answer::kBoolValue:
      return FieldDefinition::kBoolField;
    case v1::Answer::kEnumValue:
      return FieldDefinition::kEnumField;
    case v1::Answer::kDateValue:
      return FieldDefinition::kDateField;
    case v1::Answer::kScaleValue:
      return FieldDefinition::kScaleField;
    case v1::Answer::VALUE_NOT_SET:
      break;
  }
  return FieldDefinition::SPEC_NOT_SET;
}

bool IsValidDate(const common::v1::Date& date) {
  if (date.year() < 1900 || date.year() > 2200) return false;
  const absl::CivilDay day(date.year(), date.month(), date.day());
  return day.year() == date.year() && day.month() == date.month() && day.day() == date.day();
}

// Number of Unicode code points (text limits are in characters, not bytes).
size_t CharacterCount(absl::string_view text) {
  return std::count_if(text.begin(), text.end(),
                       [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

// Why `answer` does not fit `field`; empty when it does.
std::string AnswerProblem(const FieldDefinition& field, const v1::Answer& answer) {
  if (answer.value_case() == v1::Answer::VALUE_NOT_SET) {
    return absl::StrCat("no value given; expects a ", TypeName(field.spec_case()), " value");
  }
  if (ExpectedSpec(answer.value_case()) != field.spec_case()) {
    return absl::StrCat("wrong type: the field is ", TypeName(field.spec_case()), ", the answer ",
                        TypeName(ExpectedSpec(answer.value_case())));
  }
  switch (field.spec_case()) {
    case FieldDefinition::kTextField: {
      const int max = field.text_field().max_length() > 0 ? field.text_field().max_length()
                                                          : kDefaultTextMaxLength;
      if (absl::StripAsciiWhitespace(answer.text_value()).empty()) {
        return "text is empty or only spaces";
      }
      if (CharacterCount(answer.text_value()) > static_cast<size_t>(max)) {
        return absl::StrCat("text longer than ", max, " characters");
      }
      return "";
    }
    case FieldDefinition::kEnumField: {
      std::vector<std::string> keys;
      for (const auto& option : field.enum_field().options()) {
        if (option.key() == answer.enum_value()) return "";
        keys.push_back(option.key());
      }
      return absl::StrCat("'", answer.enum_value().substr(0, 64),
                          "' is not an option; options: ", absl::StrJoin(keys, ", "));
    }
    case FieldDefinition::kDateField:
      if (!IsValidDate(answer.date_value())) return "not a valid calendar date";
      return "";
    case FieldDefinition::kScaleField: {
      const auto& scale = field.scale_field();
      if (answer.scale_value() < scale.min() || answer.scale_value() > scale.max()) {
        return absl::StrCat(answer.scale_value(), " is outside the scale ", scale.min(), " to ",
                            scale.max());
      }
      return "";
    }
    case FieldDefinition::kBoolField:
    case FieldDefinition::SPEC_NOT_SET:
      return "";
  }
  return "";
}

const v1::Answer* FindAnswer(const Answers& answers, const std::string& key) {
  for (const auto& answer : answers) {
    if (answer.field_key() == key) return &answer;
  }
  return nullptr;
}

bool ConditionHolds(const v1::AnswerCondition& condition, const Answers& answers) {
  const v1::Answer* answer = FindAnswer(answers, condition.field_key());
  if (condition.test_case() == v1::AnswerCondition::kAnswered) {
    return (answer != nullptr) == condition.answered();
  }
  if (answer == nullptr) return false;
  switch (condition.test_case()) {
    case v1::AnswerCondition::kBoolEquals:
      return answer->value_case() == v1::Answer::kBoolValue &&
             answer->bool_value() == condition.bool_equals();
    case v1::AnswerCondition::kEnumIn: {
      if (answer->value_case() != v1::Answer::kEnumValue) return false;
      const auto& keys = condition.enum_in().keys();
      return std::find(keys.begin(), keys.end(), answer->enum_value()) != keys.end();
    }
    case v1::AnswerCondition::kScaleAtMost:
      return answer->value_case() == v1::Answer::kScaleValue &&
             answer->scale_value() <= condition.scale_at_most();
    case v1::AnswerCondition::kScaleAtLeast:
      return answer->value_case() == v1::Answer::kScaleValue &&
             answer->scale_value() >= condition.scale_at_least();
    case v1::AnswerCondition::kAnswered:
    case v1::AnswerCondition::TEST_NOT_SET:
      return false;
  }
  return false;
}

}  // namespace

const std::vector<PathwayVersion>& DefaultPathways() {
  static const auto* const defaults = new std::vector<PathwayVersion>(BuildDefaults());
  return *defaults;
}

bool IsKey(absl::string_view key) {
  if (key.empty() || key.size() > 63 || !(key[0] >= 'a' && key[0] <= 'z')) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

std::vector<FieldViolation> ValidateAnswers(const PathwayVersion& pathway, const Answers& answers) {
  std::vector<FieldViolation> violations;
  std::map<std::string, const FieldDefinition*> fields;
  for (const auto& field : pathway.fields()) fields.emplace(field.key(), &field);
  const std::string where =
      absl::StrCat("pathway '", pathway.pathway_key(), "' v", pathway.version());
  std::set<std::string> seen;
  for (int i = 0; i < answers.size(); ++i) {
    const v1::Answer& answer = answers[i];
    if (answer.field_key().empty()) {
      violations.push_back({absl::StrCat("answers[", i, "].field_key"), "required: the field key"});
      continue;
    }
    // Keys that are not keys are not echoed back verbatim beyond a bounded length.
    const std::string name = absl::StrCat("answers.", answer.field_key().substr(0, 64));
    auto field = fields.find(answer.field_key());
    if (field == fields.end()) {
      violations.push_back({name, absl::StrCat("unknown field: ", where, " has no such field")});
      continue;
    }
    if (!seen.insert(answer.field_key()).second) {
      violations.push_back({name, "answered more than once"});
      continue;
    }
    if (std::string problem = AnswerProblem(*field->second, answer); !problem.empty()) {
      violations.push_back({name, std::move(problem)});
    }
  }
  for (const auto& field : pathway.fields()) {
    if (field.required() && !seen.contains(field.key()) &&
        FindAnswer(answers, field.key()) == nullptr) {
      violations.push_back({absl::StrCat("answers.", field.key()),
                            absl::StrCat("required ", TypeName(field.spec_case()),
                                         " field missing: '", field.label(), "'")});
    }
  }
  return violations;
}

std::vector<const v1::RoutingRule*> FiringRules(const PathwayVersion& pathway,
                                                const Answers& answers) {
  std::vector<const v1::RoutingRule*> fired;
  for (const auto& rule : pathway.routing_rules()) {
    if (rule.all_of().empty()) continue;
    const bool all = std::all_of(rule.all_of().begin(), rule.all_of().end(),
                                 [&](const auto& c) { return ConditionHolds(c, answers); });
    if (all) fired.push_back(&rule);
  }
  return fired;
}

std::optional<int> WellbeingScore(const PathwayVersion& pathway, const Answers& answers) {
  if (pathway.wellbeing_field_key().empty()) return std::nullopt;
  const v1::Answer* answer = FindAnswer(answers, pathway.wellbeing_field_key());
  if (answer == nullptr || answer->value_case() != v1::Answer::kScaleValue) return std::nullopt;
  return answer->scale_value();
}

bool WellbeingDeclined(const std::vector<int>& latest_three_oldest_first, int drop_points) {
  if (latest_three_oldest_first.size() < 3) return false;
  const size_t n = latest_three_oldest_first.size();
  return latest_three_oldest_first[n - 3] - latest_three_oldest_first[n - 1] >= drop_points;
}

std::string GateName(const v1::Gate& gate) {
  if (gate.gate_case() == v1::Gate::kConsentGate) return gate.consent_gate();
  switch (gate.owner_gate()) {
    case v1::OWNER_GATE_APPOINTMENT_OWNER:
      return "appointment_owner";
    case v1::OWNER_GATE_ESCALATION_ROUTE:
      return "escalation_route";
    case v1::OWNER_GATE_RECEIVING_TEAM_CONFIRMED:
      return "receiving_team_confirmed";
    case v1::OWNER_GATE_CLINICAL_FOLLOW_UP_OWNER:
      return "clinical_follow_up_owner";
    default:
      return "unspecified_owner_gate";
  }
}

std::optional<std::string> UnmetOwnerGate(
    v1::OwnerGate gate, const v1::EnrollmentOwners& owners,
    const std::function<bool(const std::string&)>& is_peer_supporter) {
  // An owner id that is a peer supporter counts as no owner.
  auto owner = [&](const std::string& id) { return !id.empty() && !is_peer_supporter(id); };
  auto peer_note = [&](const std::string& id) {
    return !id.empty() && is_peer_supporter(id) ? " (a peer supporter cannot be the owner)" : "";
  };
  switch (gate) {
    case v1::OWNER_GATE_APPOINTMENT_OWNER:
      if (owner(owners.appointment_owner())) return std::nullopt;
      return absl::StrCat("owners.appointment_owner is required: no clear appointment ownership",
                          peer_note(owners.appointment_owner()));
    case v1::OWNER_GATE_ESCALATION_ROUTE:
      if (owner(owners.receiving_clinician()) || owner(owners.receiving_team())) {
        return std::nullopt;
      }
      return "owners.receiving_clinician or owners.receiving_team is required: no escalation "
             "route beyond peer support";
    case v1::OWNER_GATE_RECEIVING_TEAM_CONFIRMED:
      if (owner(owners.receiving_team())) return std::nullopt;
      return absl::StrCat(
          "owners.receiving_team is required: the receiving team's responsibility is not "
          "confirmed",
          peer_note(owners.receiving_team()));
    case v1::OWNER_GATE_CLINICAL_FOLLOW_UP_OWNER:
      if (owner(owners.clinical_follow_up_owner())) return std::nullopt;
      return absl::StrCat(
          "owners.clinical_follow_up_owner is required: peer support cannot be the only "
          "follow-up while recent crisis risk is active",
          peer_note(owners.clinical_follow_up_owner()));
    default:
      return "unknown owner gate";
  }
}

std::vector<FieldViolation> ValidateEnrollmentShape(const PathwayVersion& pathway,
                                                    const v1::CreateEnrollmentRequest& request) {
  std::vector<FieldViolation> violations;
  auto check_date = [&](const char* name, bool present, const common::v1::Date& date) {
    if (present && !IsValidDate(date)) violations.push_back({name, "not a valid calendar date"});
  };
  check_date("starts_on", request.has_starts_on(), request.starts_on());
  check_date("ends_on", request.has_ends_on(), request.ends_on());
  check_date("review_on", request.has_review_on(), request.review_on());
  if (pathway.requires_end_or_review() && !request.has_ends_on() && !request.has_review_on()) {
    violations.push_back({"ends_on", absl::StrCat("pathway '", pathway.pathway_key(),
                                                  "' is time-limited or reviewable: set ends_on or "
                                                  "review_on")});
  }
  const auto& o = request.owners();
  for (const auto& [name, value] :
       {std::pair{"owners.appointment_owner", &o.appointment_owner()},
        std::pair{"owners.receiving_clinician", &o.receiving_clinician()},
        std::pair{"owners.receiving_team", &o.receiving_team()},
        std::pair{"owners.clinical_follow_up_owner", &o.clinical_follow_up_owner()}}) {
    if (value->size() > 128) violations.push_back({name, "at most 128 characters"});
  }
  return violations;
}

}  // namespace peerpath::checkin

namespace peerpath::checkin {

std::vector<FieldViolation> ValidatePathwayDefinition(const v1::PathwayVersion& p) {
  std::vector<FieldViolation> v;
  auto add = [&](std::string field, std::string description) {
    v.push_back({absl::StrCat("pathway.", field), std::move(description)});
  };
  constexpr char kKeyRule[] =
      "a lower-case letter, then up to 62 lower-case letters, digits or underscores";
  if (!IsKey(p.pathway_key())) add("pathway_key", kKeyRule);
  if (p.display_name().empty() || CharacterCount(p.display_name()) > 200) {
    add("display_name", "1 to 200 characters");
  }
  if (CharacterCount(p.description()) > 2000) add("description", "at most 2,000 characters");
  if (p.fields().empty() || p.fields_size() > 100) add("fields", "1 to 100 fields");
  std::map<std::string, const FieldDefinition*> fields;
  for (int i = 0; i < p.fields_size(); ++i) {
    const FieldDefinition& f = p.fields(i);
    const std::string at = absl::StrCat("fields[", i, "]");
    if (!IsKey(f.key())) {
      add(at + ".key", kKeyRule);
    } else if (!fields.emplace(f.key(), &f).second) {
      add(at + ".key", "field key used twice");
    }
    if (f.label().empty() || CharacterCount(f.label()) > 500)
      add(at + ".label", "1 to 500 characters");
    switch (f.spec_case()) {
      case FieldDefinition::SPEC_NOT_SET:
        add(at, "exactly one of text_field, bool_field, enum_field, date_field, scale_field");
        break;
      case FieldDefinition::kTextField:
        if (f.text_field().max_length() < 0 || f.text_field().max_length() > 10000) {
          add(at + ".text_field.max_length", "0 (2,000) or 1 to 10,000");
        }
        break;
      case FieldDefinition::kEnumField: {
        const auto& options = f.enum_field().options();
        if (options.empty() || options.size() > 50)
          add(at + ".enum_field.options", "1 to 50 options");
        std::set<std::string> keys;
        for (int j = 0; j < options.size(); ++j) {
          if (!IsKey(options[j].key()) || !keys.insert(options[j].key()).second) {
            add(absl::StrCat(at, ".enum_field.options[", j, "].key"),
                absl::StrCat(kKeyRule, ", unique in the field"));
          }
          if (options[j].label().empty() || CharacterCount(options[j].label()) > 200) {
            add(absl::StrCat(at, ".enum_field.options[", j, "].label"), "1 to 200 characters");
          }
        }
        break;
      }
      case FieldDefinition::kScaleField: {
        const auto& s = f.scale_field();
        if (s.min() < 0 || s.max() > 100 || s.min() >= s.max()) {
          add(at + ".scale_field", "bounds within 0 to 100 and min below max");
        }
        break;
      }
      case FieldDefinition::kBoolField:
      case FieldDefinition::kDateField:
        break;
    }
  }
  if (p.gates_size() > 20) add("gates", "at most 20 gates");
  std::set<std::string> gate_names;
  static const std::set<std::string> kConsentGates = {"consent_information_sharing",
                                                      "agreement_to_peer_involvement",
                                                      "consent_aligned_communication"};
  for (int i = 0; i < p.gates_size(); ++i) {
    const v1::Gate& g = p.gates(i);
    const std::string at = absl::StrCat("gates[", i, "]");
    if (g.gate_case() == v1::Gate::kConsentGate && !kConsentGates.contains(g.consent_gate())) {
      add(at + ".consent_gate",
          "one of consent_information_sharing, agreement_to_peer_involvement, "
          "consent_aligned_communication");
    } else if (g.gate_case() == v1::Gate::kOwnerGate &&
               (g.owner_gate() == v1::OWNER_GATE_UNSPECIFIED ||
                !v1::OwnerGate_IsValid(g.owner_gate()))) {
      add(at + ".owner_gate", "a known owner gate");
    } else if (g.gate_case() == v1::Gate::GATE_NOT_SET) {
      add(at, "exactly one of consent_gate, owner_gate");
    } else if (!gate_names.insert(GateName(g)).second) {
      add(at, "gate listed twice");
    }
  }
  if (p.routing_rules_size() > 50) add("routing_rules", "at most 50 rules");
  std::set<std::string> rule_ids;
  for (int i = 0; i < p.routing_rules_size(); ++i) {
    const v1::RoutingRule& r = p.routing_rules(i);
    const std::string at = absl::StrCat("routing_rules[", i, "]");
    if (!IsKey(r.rule_id()) || !rule_ids.insert(r.rule_id()).second) {
      add(at + ".rule_id", absl::StrCat(kKeyRule, ", unique among the rules"));
    }
    if (r.all_of().empty() || r.all_of_size() > 10) add(at + ".all_of", "1 to 10 conditions");
    for (int j = 0; j < r.all_of_size(); ++j) {
      const v1::AnswerCondition& c = r.all_of(j);
      const std::string cat = absl::StrCat(at, ".all_of[", j, "]");
      auto field = fields.find(c.field_key());
      if (field == fields.end()) {
        add(cat + ".field_key", "must name a field of this version");
        continue;
      }
      const auto spec = field->second->spec_case();
      bool fits = false;
      switch (c.test_case()) {
        case v1::AnswerCondition::kAnswered:
          fits = true;
          break;
        case v1::AnswerCondition::kBoolEquals:
          fits = spec == FieldDefinition::kBoolField;
          break;
        case v1::AnswerCondition::kScaleAtMost:
        case v1::AnswerCondition::kScaleAtLeast:
          fits = spec == FieldDefinition::kScaleField;
          break;
        case v1::AnswerCondition::kEnumIn: {
          fits = spec == FieldDefinition::kEnumField && !c.enum_in().keys().empty();
          for (const auto& key : c.enum_in().keys()) {
            const auto& options = field->second->enum_field().options();
            fits = fits && std::any_of(options.begin(), options.end(),
                                       [&](const auto& o) { return o.key() == key; });
          }
          break;
        }
        case v1::AnswerCondition::TEST_NOT_SET:
          break;
      }
      if (!fits) {
        add(cat, absl::StrCat("the test does not fit the ", TypeName(spec),
                              " field (text fields can only be tested for an answer)"));
      }
    }
    if (r.category() == common::v1::CONCERN_CATEGORY_UNSPECIFIED) add(at + ".category", "required");
    if (r.severity() == common::v1::CONCERN_SEVERITY_UNSPECIFIED) add(at + ".severity", "required");
    if (r.category() == common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY &&
        !r.stops_routine_engagement()) {
      add(at + ".stops_routine_engagement", "must be true for an immediate-safety rule");
    }
  }
  std::set<int> kinds;
  for (int i = 0; i < p.missed_appointment_rules_size(); ++i) {
    const auto& r = p.missed_appointment_rules(i);
    const std::string at = absl::StrCat("missed_appointment_rules[", i, "]");
    if (!IsKey(r.rule_id()) || !rule_ids.insert(r.rule_id()).second) {
      add(at + ".rule_id", absl::StrCat(kKeyRule, ", unique among the rules"));
    }
    if (r.appointment_kind() == v1::APPOINTMENT_KIND_UNSPECIFIED ||
        !kinds.insert(r.appointment_kind()).second) {
      add(at + ".appointment_kind", "required, at most one rule per kind");
    }
    if (r.category() == common::v1::CONCERN_CATEGORY_UNSPECIFIED) add(at + ".category", "required");
    if (r.severity() == common::v1::CONCERN_SEVERITY_UNSPECIFIED) add(at + ".severity", "required");
  }
  if (!p.wellbeing_field_key().empty()) {
    auto field = fields.find(p.wellbeing_field_key());
    if (field == fields.end() || !field->second->has_scale_field() ||
        field->second->scale_field().min() != 1 || field->second->scale_field().max() != 5) {
      add("wellbeing_field_key", "must name a scale field with bounds 1 to 5");
    }
    if (p.wellbeing_decline_severity() == common::v1::CONCERN_SEVERITY_UNSPECIFIED) {
      add("wellbeing_decline_severity", "required with a wellbeing field");
    }
  }
  if (p.missed_contact_severity() == common::v1::CONCERN_SEVERITY_UNSPECIFIED) {
    add("missed_contact_severity", "required");
  }
  if (p.acuity_units() < 0 || p.acuity_units() > 100) add("acuity_units", "0 (1) to 100");
  return v;
}

}  // namespace peerpath::checkin
