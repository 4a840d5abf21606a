// The pathway model as pure functions: the default pathways carry exactly the seeds' fields,
// answers are validated field by field (every problem at once), routing rules fire once each.
#include "services/checkin/pathway.h"

#include <gtest/gtest.h>

#include <set>

namespace peerpath::checkin {
namespace {

const v1::PathwayVersion& Default(const std::string& key) {
  for (const auto& p : DefaultPathways()) {
    if (p.pathway_key() == key) return p;
  }
  ADD_FAILURE() << "no default pathway " << key;
  return DefaultPathways()[0];
}

std::vector<std::string> FieldKeys(const v1::PathwayVersion& p) {
  std::vector<std::string> keys;
  for (const auto& f : p.fields()) keys.push_back(f.key());
  return keys;
}

std::vector<std::string> GateNames(const v1::PathwayVersion& p) {
  std::vector<std::string> names;
  for (const auto& g : p.gates()) names.push_back(GateName(g));
  return names;
}

std::set<std::string> Fields(const std::vector<FieldViolation>& violations) {
  std::set<std::string> out;
  for (const auto& v : violations) out.insert(v.field);
  return out;
}

v1::Answer Enum(const std::string& key, const std::string& value) {
  v1::Answer a;
  a.set_field_key(key);
  a.set_enum_value(value);
  return a;
}
v1::Answer Bool(const std::string& key, bool value) {
  v1::Answer a;
  a.set_field_key(key);
  a.set_bool_value(value);
  return a;
}
v1::Answer Text(const std::string& key, const std::string& value) {
  v1::Answer a;
  a.set_field_key(key);
  a.set_text_value(value);
  return a;
}
v1::Answer Scale(const std::string& key, int value) {
  v1::Answer a;
  a.set_field_key(key);
  a.set_scale_value(value);
  return a;
}
v1::Answer Date(const std::string& key, int y, int m, int d) {
  v1::Answer a;
  a.set_field_key(key);
  a.mutable_date_value()->set_year(y);
  a.mutable_date_value()->set_month(m);
  a.mutable_date_value()->set_day(d);
  return a;
}

Answers Of(std::vector<v1::Answer> list) {
  Answers answers;
  for (auto& a : list) *answers.Add() = std::move(a);
  return answers;
}

Answers ValidStructured(int wellbeing, const std::string& concern = "none") {
  return Of({Text("opening_question", "How was your week?"), Scale("wellbeing", wellbeing),
             Bool("encouragement_to_seek_support_given", true), Enum("concern_noticed", concern)});
}

TEST(DefaultPathways, ShipFourPathwaysWithTheSeedsFields) {
  ASSERT_EQ(DefaultPathways().size(), 4u);
  EXPECT_EQ(FieldKeys(Default("early_engagement")),
            (std::vector<std::string>{"peer_support_offer", "person_preference",
                                      "engagement_barrier_identified", "peer_contact_completed",
                                      "information_shared_with_consent", "next_appointment_status",
                                      "follow_up_action"}));
  EXPECT_EQ(FieldKeys(Default("step_down")),
            (std::vector<std::string>{"step_down_reason", "peer_support_purpose", "recovery_goals",
                                      "warning_signs", "community_connection_plan",
                                      "clinical_review_date", "escalation_route"}));
  EXPECT_EQ(FieldKeys(Default("crisis_transition")),
            (std::vector<std::string>{"transition_source", "peer_role", "consent_status",
                                      "first_appointment_date", "engagement_concern",
                                      "peer_contact_outcome", "concerns_routed",
                                      "receiving_clinician_notified"}));
  EXPECT_EQ(FieldKeys(Default("structured_checkin")),
            (std::vector<std::string>{"opening_question", "current_stressors", "current_supports",
                                      "wellbeing", "encouragement_to_seek_support_given",
                                      "concern_noticed"}));
  for (const auto& p : DefaultPathways()) {
    EXPECT_EQ(p.version(), 1);
    EXPECT_EQ(p.published_by(), "system:default");
    for (const auto& f : p.fields()) {
      EXPECT_TRUE(IsKey(f.key())) << f.key();
      // Every seed-named field of the three pathway examples is required.
      if (p.pathway_key() != "structured_checkin") {
        EXPECT_TRUE(f.required()) << f.key();
      }
    }
  }
}

TEST(DefaultPathways, CarryTheCannotProceedWithoutGates) {
  EXPECT_EQ(GateNames(Default("early_engagement")),
            (std::vector<std::string>{"consent_information_sharing", "appointment_owner",
                                      "escalation_route"}));
  EXPECT_EQ(GateNames(Default("step_down")),
            (std::vector<std::string>{"receiving_team_confirmed", "agreement_to_peer_involvement",
                                      "escalation_route"}));
  EXPECT_EQ(GateNames(Default("crisis_transition")),
            (std::vector<std::string>{"receiving_team_confirmed", "consent_aligned_communication",
                                      "escalation_route", "clinical_follow_up_owner"}));
  EXPECT_TRUE(GateNames(Default("structured_checkin")).empty());
  EXPECT_TRUE(Default("step_down").requires_end_or_review());
  EXPECT_EQ(Default("crisis_transition").acuity_units(), 3);
}

TEST(DefaultPathways, EveryImmediateSafetyRuleStopsRoutineEngagement) {
  for (const auto& p : DefaultPathways()) {
    for (const auto& r : p.routing_rules()) {
      if (r.category() == common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY) {
        EXPECT_TRUE(r.stops_routine_engagement()) << p.pathway_key() << "/" << r.rule_id();
        EXPECT_EQ(r.severity(), common::v1::CONCERN_SEVERITY_CRITICAL);
      }
    }
  }
}

TEST(ValidateAnswers, ValidStructuredCheckInHasNoViolations) {
  EXPECT_TRUE(ValidateAnswers(Default("structured_checkin"), ValidStructured(4)).empty());
}

TEST(ValidateAnswers, MissingRequiredFieldsAreEachNamed) {
  const auto violations =
      ValidateAnswers(Default("early_engagement"), Of({Enum("peer_support_offer", "offered")}));
  EXPECT_EQ(Fields(violations),
            (std::set<std::string>{
                "answers.person_preference", "answers.engagement_barrier_identified",
                "answers.peer_contact_completed", "answers.information_shared_with_consent",
                "answers.next_appointment_status", "answers.follow_up_action"}));
}

TEST(ValidateAnswers, EachKindOfBadAnswerIsOneViolation) {
  const auto violations =
      ValidateAnswers(Default("structured_checkin"),
                      Of({Text("no_such_field", "x"),                        // unknown field
                          Scale("wellbeing", 6),                             // out of the scale
                          Text("encouragement_to_seek_support_given", "y"),  // wrong type
                          Enum("concern_noticed", "aliens"),                 // not an option
                          Text("opening_question", "   "),                   // only spaces
                          Text("current_supports", std::string(2001, 'a')),  // too long
                          Text("opening_question", "again")}));              // answered twice
  ASSERT_EQ(violations.size(), 7u);
  EXPECT_EQ(violations[0].field, "answers.no_such_field");
  EXPECT_NE(violations[0].description.find("unknown field"), std::string::npos);
  EXPECT_EQ(violations[1].field, "answers.wellbeing");
  EXPECT_NE(violations[1].description.find("outside the scale 1 to 5"), std::string::npos);
  EXPECT_EQ(violations[2].field, "answers.encouragement_to_seek_support_given");
  EXPECT_NE(violations[2].description.find("wrong type"), std::string::npos);
  EXPECT_EQ(violations[3].field, "answers.concern_noticed");
  EXPECT_NE(violations[3].description.find("not an option"), std::string::npos);
  EXPECT_EQ(violations[4].field, "answers.opening_question");
  EXPECT_EQ(violations[5].field, "answers.current_supports");
  EXPECT_EQ(violations[6].field, "answers.opening_question");
  EXPECT_NE(violations[6].description.find("more than once"), std::string::npos);
}

TEST(ValidateAnswers, DatesMustBeCalendarDates) {
  Answers answers;
  for (const auto& f : Default("step_down").fields()) {
    if (f.has_text_field()) *answers.Add() = Text(f.key(), "plan");
  }
  *answers.Add() = Date("clinical_review_date", 2026, 2, 30);
  const auto violations = ValidateAnswers(Default("step_down"), answers);
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].field, "answers.clinical_review_date");
  answers.RemoveLast();
  *answers.Add() = Date("clinical_review_date", 2026, 2, 28);
  EXPECT_TRUE(ValidateAnswers(Default("step_down"), answers).empty());
}

TEST(ValidateAnswers, AnswerWithoutValueOrKeyIsNamed) {
  v1::Answer no_value;
  no_value.set_field_key("wellbeing");
  v1::Answer no_key;
  no_key.set_bool_value(true);
  const auto violations = ValidateAnswers(Default("structured_checkin"), Of({no_value, no_key}));
  EXPECT_TRUE(Fields(violations).contains("answers.wellbeing"));
  EXPECT_TRUE(Fields(violations).contains("answers[1].field_key"));
}

TEST(FiringRules, ImmediateSafetyDisclosureFiresOnlyItsRule) {
  const auto fired =
      FiringRules(Default("structured_checkin"), ValidStructured(3, "immediate_safety"));
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0]->rule_id(), "immediate_safety");
  EXPECT_TRUE(fired[0]->stops_routine_engagement());
  EXPECT_TRUE(FiringRules(Default("structured_checkin"), ValidStructured(3)).empty());
}

TEST(FiringRules, EarlyEngagementSafetyFollowUpRoutesToClinicalReview) {
  const auto answers = Of(
      {Enum("peer_support_offer", "offered"), Enum("person_preference", "wants_peer_support"),
       Enum("engagement_barrier_identified", "none"), Bool("peer_contact_completed", true),
       Bool("information_shared_with_consent", true), Enum("next_appointment_status", "scheduled"),
       Enum("follow_up_action", "clinical_review_safety_concern")});
  const auto fired = FiringRules(Default("early_engagement"), answers);
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0]->category(), common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
}

TEST(FiringRules, ConditionsCombineWithAndAndAnsweredTests) {
  v1::PathwayVersion p = Default("structured_checkin");
  auto* rule = p.add_routing_rules();
  rule->set_rule_id("low_and_no_encouragement");
  auto* low = rule->add_all_of();
  low->set_field_key("wellbeing");
  low->set_scale_at_most(2);
  auto* no = rule->add_all_of();
  no->set_field_key("encouragement_to_seek_support_given");
  no->set_bool_equals(false);
  auto* unanswered = rule->add_all_of();
  unanswered->set_field_key("current_supports");
  unanswered->set_answered(false);
  Answers answers = ValidStructured(2);
  EXPECT_TRUE(FiringRules(p, answers).empty());  // Encouragement was given.
  answers[2].set_bool_value(false);
  ASSERT_EQ(FiringRules(p, answers).size(), 1u);
  *answers.Add() = Text("current_supports", "friends");
  EXPECT_TRUE(FiringRules(p, answers).empty());
}

TEST(Wellbeing, FallOfTwoOverThreeScoresIsADecline) {
  EXPECT_TRUE(WellbeingDeclined({4, 3, 2}, 2));
  EXPECT_TRUE(WellbeingDeclined({5, 5, 3}, 2));
  EXPECT_FALSE(WellbeingDeclined({4, 4, 3}, 2));
  EXPECT_FALSE(WellbeingDeclined({2, 4, 5}, 2));
  EXPECT_FALSE(WellbeingDeclined({5, 3}, 2));  // Fewer than three.
  EXPECT_EQ(WellbeingScore(Default("structured_checkin"), ValidStructured(4)), 4);
  EXPECT_EQ(WellbeingScore(Default("early_engagement"), ValidStructured(4)), std::nullopt);
}

TEST(OwnerGates, CrisisTransitionWithoutClinicalFollowUpOwnerIsUnmet) {
  const auto nobody_is_a_peer = [](const std::string&) { return false; };
  v1::EnrollmentOwners owners;
  owners.set_receiving_team("team-east");
  auto unmet = UnmetOwnerGate(v1::OWNER_GATE_CLINICAL_FOLLOW_UP_OWNER, owners, nobody_is_a_peer);
  ASSERT_TRUE(unmet.has_value());
  EXPECT_NE(unmet->find("only follow-up"), std::string::npos);
  owners.set_clinical_follow_up_owner("dr-lee");
  EXPECT_FALSE(UnmetOwnerGate(v1::OWNER_GATE_CLINICAL_FOLLOW_UP_OWNER, owners, nobody_is_a_peer));
  EXPECT_FALSE(UnmetOwnerGate(v1::OWNER_GATE_ESCALATION_ROUTE, owners, nobody_is_a_peer));
  EXPECT_TRUE(UnmetOwnerGate(v1::OWNER_GATE_APPOINTMENT_OWNER, owners, nobody_is_a_peer));
}

TEST(OwnerGates, PeerSupporterNeverSatisfiesAnOwnerGate) {
  v1::EnrollmentOwners owners;
  owners.set_clinical_follow_up_owner("peer-sam");
  auto unmet = UnmetOwnerGate(v1::OWNER_GATE_CLINICAL_FOLLOW_UP_OWNER, owners,
                              [](const std::string& id) { return id == "peer-sam"; });
  ASSERT_TRUE(unmet.has_value());
  EXPECT_NE(unmet->find("peer supporter"), std::string::npos);
}

TEST(EnrollmentShape, StepDownNeedsAnEndOrReviewDate) {
  v1::CreateEnrollmentRequest request;
  auto violations = ValidateEnrollmentShape(Default("step_down"), request);
  ASSERT_EQ(violations.size(), 1u);
  EXPECT_EQ(violations[0].field, "ends_on");
  request.mutable_review_on()->set_year(2026);
  request.mutable_review_on()->set_month(12);
  request.mutable_review_on()->set_day(1);
  EXPECT_TRUE(ValidateEnrollmentShape(Default("step_down"), request).empty());
  EXPECT_TRUE(ValidateEnrollmentShape(Default("early_engagement"), {}).empty());
}

}  // namespace
}  // namespace peerpath::checkin

namespace peerpath::checkin {
namespace {

TEST(PathwayDefinition, DefaultsAreValid) {
  for (const auto& p : DefaultPathways()) {
    EXPECT_TRUE(ValidatePathwayDefinition(p).empty()) << p.pathway_key();
  }
}

TEST(PathwayDefinition, EachProblemIsNamed) {
  v1::PathwayVersion p = DefaultPathways()[3];
  p.set_pathway_key("Bad Key");
  p.mutable_fields(1)->set_key("opening_question");        // Duplicate key.
  p.mutable_fields(3)->mutable_scale_field()->set_max(1);  // min == max.
  p.mutable_routing_rules(0)->set_stops_routine_engagement(false);
  p.mutable_routing_rules(1)->mutable_all_of(0)->set_field_key("nowhere");
  auto* text_test = p.mutable_routing_rules(2)->mutable_all_of(0);
  text_test->set_field_key("current_supports");  // Enum test on a text field.
  p.add_gates()->set_consent_gate("made_up_gate");
  p.clear_missed_contact_severity();
  std::set<std::string> fields;
  for (const auto& v : ValidatePathwayDefinition(p)) fields.insert(v.field);
  EXPECT_EQ(fields, (std::set<std::string>{
                        "pathway.pathway_key",
                        "pathway.fields[1].key",
                        "pathway.fields[3].scale_field",
                        "pathway.routing_rules[0].stops_routine_engagement",
                        "pathway.routing_rules[1].all_of[0].field_key",
                        "pathway.routing_rules[2].all_of[0]",
                        "pathway.gates[0].consent_gate",
                        "pathway.wellbeing_field_key",
                        "pathway.missed_contact_severity",
                    }));
}

}  // namespace
}  // namespace peerpath::checkin
