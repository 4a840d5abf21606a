// The consent rules as pure functions: access decisions and gates, with the clock passed in.
#include "services/consent/access.h"

#include <gtest/gtest.h>

#include "common/time_util.h"
#include "services/consent/validation.h"

namespace peerpath::consent {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

ConsentFacts Permit(std::string id, RecipientRef to, std::initializer_list<int> purposes,
                    std::initializer_list<int> categories) {
  ConsentFacts c;
  c.id = std::move(id);
  c.recipient = std::move(to);
  for (int p : purposes) c.purposes |= Bit(p);
  for (int k : categories) c.categories |= Bit(k);
  c.valid_from = kNow - absl::Hours(24);
  return c;
}

ConsentFacts Deny(std::string id, RecipientRef to, std::initializer_list<int> purposes,
                  std::initializer_list<int> categories) {
  ConsentFacts c = Permit(std::move(id), std::move(to), purposes, categories);
  c.directive = Directive::kDeny;
  return c;
}

const RecipientRef kClinicianRole{v1::RECIPIENT_KIND_ROLE, "clinician"};
const RecipientRef kPeerRole{v1::RECIPIENT_KIND_ROLE, "peer_supporter"};
const RecipientRef kCounty{v1::RECIPIENT_KIND_ORGANIZATION, "county"};

Accessor ClinicianAlice() {
  Accessor a;
  a.person_subject = "alice";
  a.identities = {{v1::RECIPIENT_KIND_PERSON, "alice"}, kClinicianRole};
  return a;
}

const AccessQuery kAppointmentsForCare{v1::DATA_CATEGORY_APPOINTMENT_STATUS,
                                       v1::PURPOSE_CARE_COORDINATION};

TEST(DecideAccess, DeniesByDefault) {
  const AccessDecision d = DecideAccess({}, {}, ClinicianAlice(), kAppointmentsForCare, kNow);
  EXPECT_FALSE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_NO_CONSENT);
  EXPECT_TRUE(d.consent_id.empty());
}

TEST(DecideAccess, CoveringPermitPermitsWithItsEnd) {
  ConsentFacts c = Permit("c1", kClinicianRole, {v1::PURPOSE_CARE_COORDINATION},
                          {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  c.valid_until = kNow + absl::Hours(1);
  const AccessDecision d = DecideAccess({c}, {}, ClinicianAlice(), kAppointmentsForCare, kNow);
  EXPECT_TRUE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_PERMITTED_BY_CONSENT);
  EXPECT_EQ(d.consent_id, "c1");
  EXPECT_EQ(d.permitted_until, kNow + absl::Hours(1));
}

TEST(DecideAccess, LongestLastingPermitDecides) {
  ConsentFacts short_one = Permit("short", kClinicianRole, {v1::PURPOSE_CARE_COORDINATION},
                                  {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  short_one.valid_until = kNow + absl::Hours(1);
  ConsentFacts open =
      Permit("open", {v1::RECIPIENT_KIND_PERSON, "alice"}, {v1::PURPOSE_CARE_COORDINATION},
             {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  EXPECT_EQ(
      DecideAccess({short_one, open}, {}, ClinicianAlice(), kAppointmentsForCare, kNow).consent_id,
      "open");
}

TEST(DecideAccess, AGroupsDenyBindsAPersonWhoseMembershipsAreUnknown) {
  const ConsentFacts permit =
      Permit("p", {v1::RECIPIENT_KIND_PERSON, "alice"}, {v1::PURPOSE_CARE_COORDINATION},
             {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  Accessor by_subject;
  by_subject.person_subject = "alice";
  by_subject.identities = {{v1::RECIPIENT_KIND_PERSON, "alice"}};
  by_subject.SetMembershipsUnknown(
      {v1::RECIPIENT_KIND_ROLE, v1::RECIPIENT_KIND_TEAM, v1::RECIPIENT_KIND_ORGANIZATION});
  for (const RecipientRef& group :
       {kClinicianRole, RecipientRef{v1::RECIPIENT_KIND_TEAM, "crisis"}, kCounty}) {
    SCOPED_TRACE(group.id);
    const ConsentFacts deny =
        Deny("d", group, {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
    const AccessDecision d =
        DecideAccess({permit, deny}, {}, by_subject, kAppointmentsForCare, kNow);
    EXPECT_FALSE(d.permit);
    EXPECT_EQ(d.reason, v1::ACCESS_REASON_DENIED_BY_DIRECTIVE);
    EXPECT_EQ(d.consent_id, "d");
    EXPECT_NE(d.message.find("nothing shows the recipient is outside it"), std::string::npos)
        << d.message;
    // Known memberships outside the group: the permit naming the person decides.
    Accessor known = by_subject;
    known.unknown_memberships = 0;
    EXPECT_EQ(DecideAccess({permit, deny}, {}, known, kAppointmentsForCare, kNow).consent_id, "p");
  }
  // Another person's directive, or one for another purpose or category, does not bind them.
  const ConsentFacts others =
      Deny("o", {v1::RECIPIENT_KIND_PERSON, "bob"}, {v1::PURPOSE_CARE_COORDINATION},
           {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  const ConsentFacts other_purpose =
      Deny("q", kClinicianRole, {v1::PURPOSE_BILLING}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  const ConsentFacts other_category = Deny("r", kClinicianRole, {v1::PURPOSE_CARE_COORDINATION},
                                           {v1::DATA_CATEGORY_CONTACT_DETAILS});
  EXPECT_TRUE(DecideAccess({permit, others, other_purpose, other_category}, {}, by_subject,
                           kAppointmentsForCare, kNow)
                  .permit);
}

TEST(DecideAccess, APersonsDenyBindsAGroupAsAWholeThatMayIncludeThem) {
  // A permit to the clinician role, and "do not share with alice": sharing with the role as a
  // whole reaches alice if she is a clinician, which nothing rules out.
  const ConsentFacts permit = Permit("p", kClinicianRole, {v1::PURPOSE_CARE_COORDINATION},
                                     {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  const ConsentFacts deny_alice =
      Deny("d", {v1::RECIPIENT_KIND_PERSON, "alice"}, {v1::PURPOSE_CARE_COORDINATION},
           {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  Accessor role;
  role.identities = {kClinicianRole};
  role.SetMembershipsUnknown(
      {v1::RECIPIENT_KIND_PERSON, v1::RECIPIENT_KIND_ROLE, v1::RECIPIENT_KIND_TEAM});
  const AccessDecision d = DecideAccess({permit, deny_alice}, {}, role, kAppointmentsForCare, kNow);
  EXPECT_FALSE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_DENIED_BY_DIRECTIVE);
  EXPECT_EQ(d.consent_id, "d");
  EXPECT_NE(d.message.find("named person"), std::string::npos) << d.message;
  // Without the directive, or with one for another category, the role's permit decides.
  EXPECT_TRUE(DecideAccess({permit}, {}, role, kAppointmentsForCare, kNow).permit);
  const ConsentFacts other_category =
      Deny("o", {v1::RECIPIENT_KIND_PERSON, "alice"}, {v1::PURPOSE_CARE_COORDINATION},
           {v1::DATA_CATEGORY_CONTACT_DETAILS});
  EXPECT_TRUE(DecideAccess({permit, other_category}, {}, role, kAppointmentsForCare, kNow).permit);
  // Alice herself, with her roles known, is still denied; another clinician is permitted.
  Accessor bob;
  bob.person_subject = "bob";
  bob.identities = {{v1::RECIPIENT_KIND_PERSON, "bob"}, kClinicianRole};
  EXPECT_TRUE(DecideAccess({permit, deny_alice}, {}, bob, kAppointmentsForCare, kNow).permit);
}

TEST(DecideAccess, ExplicitDenyBeatsPermitAndEmergencyAccess) {
  ConsentFacts permit =
      Permit("p", kClinicianRole, {v1::PURPOSE_TREATMENT}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  ConsentFacts deny = Deny("d", {v1::RECIPIENT_KIND_PERSON, "alice"}, {v1::PURPOSE_TREATMENT},
                           {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  GrantFacts grant{"g",
                   "alice",
                   Bit(v1::DATA_CATEGORY_APPOINTMENT_STATUS),
                   kNow - absl::Minutes(5),
                   kNow + absl::Hours(1),
                   false};
  const AccessDecision d =
      DecideAccess({permit, deny}, {grant}, ClinicianAlice(),
                   {v1::DATA_CATEGORY_APPOINTMENT_STATUS, v1::PURPOSE_TREATMENT}, kNow);
  EXPECT_FALSE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_DENIED_BY_DIRECTIVE);
  EXPECT_EQ(d.consent_id, "d");
}

TEST(DecideAccess, DenyForAnotherRecipientOrPurposeDoesNotApply) {
  ConsentFacts permit = Permit("p", kClinicianRole, {v1::PURPOSE_CARE_COORDINATION},
                               {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  ConsentFacts other_recipient =
      Deny("d1", kCounty, {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  ConsentFacts other_purpose =
      Deny("d2", kClinicianRole, {v1::PURPOSE_BILLING}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  EXPECT_TRUE(DecideAccess({permit, other_recipient, other_purpose}, {}, ClinicianAlice(),
                           kAppointmentsForCare, kNow)
                  .permit);
}

TEST(DecideAccess, ExpiredRevokedAndNotYetValidPermitNothing) {
  ConsentFacts ended = Permit("ended", kClinicianRole, {v1::PURPOSE_CARE_COORDINATION},
                              {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  ended.valid_until = kNow;  // Exclusive end.
  AccessDecision d = DecideAccess({ended}, {}, ClinicianAlice(), kAppointmentsForCare, kNow);
  EXPECT_FALSE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_CONSENT_EXPIRED);
  EXPECT_EQ(d.consent_id, "ended");

  ConsentFacts revoked = ended;
  revoked.id = "revoked";
  revoked.valid_until = absl::InfiniteFuture();
  revoked.state = ConsentState::kRevoked;
  d = DecideAccess({revoked}, {}, ClinicianAlice(), kAppointmentsForCare, kNow);
  EXPECT_FALSE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_CONSENT_REVOKED);

  ConsentFacts later = revoked;
  later.id = "later";
  later.state = ConsentState::kActive;
  later.valid_from = kNow + absl::Hours(2);
  d = DecideAccess({later, revoked}, {}, ClinicianAlice(), kAppointmentsForCare, kNow);
  EXPECT_FALSE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_CONSENT_NOT_YET_VALID);
  EXPECT_EQ(d.consent_id, "later");
  // Inclusive start.
  EXPECT_TRUE(
      DecideAccess({later}, {}, ClinicianAlice(), kAppointmentsForCare, later.valid_from).permit);
}

TEST(DecideAccess, ExpiredDenyDirectiveNoLongerDenies) {
  ConsentFacts permit = Permit("p", kClinicianRole, {v1::PURPOSE_CARE_COORDINATION},
                               {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  ConsentFacts deny = Deny("d", kClinicianRole, {v1::PURPOSE_CARE_COORDINATION},
                           {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  deny.valid_until = kNow - absl::Minutes(1);
  EXPECT_TRUE(
      DecideAccess({permit, deny}, {}, ClinicianAlice(), kAppointmentsForCare, kNow).permit);
}

TEST(DecideAccess, SubstanceUseRecordsNeedANamingConsent) {
  const AccessQuery part2{v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS, v1::PURPOSE_TREATMENT};
  ConsentFacts broad = Permit(
      "broad", kClinicianRole, {v1::PURPOSE_TREATMENT},
      {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES, v1::DATA_CATEGORY_APPOINTMENT_STATUS,
       v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS,
       v1::DATA_CATEGORY_RECOVERY_GOALS_AND_WARNING_SIGNS, v1::DATA_CATEGORY_CONTACT_DETAILS});
  AccessDecision d = DecideAccess({broad}, {}, ClinicianAlice(), part2, kNow);
  EXPECT_FALSE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_PART2_CATEGORY_NOT_NAMED);
  EXPECT_EQ(d.consent_id, "broad");

  ConsentFacts named = Permit("named", kClinicianRole, {v1::PURPOSE_TREATMENT},
                              {v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS});
  d = DecideAccess({broad, named}, {}, ClinicianAlice(), part2, kNow);
  EXPECT_TRUE(d.permit);
  EXPECT_TRUE(d.redisclosure_notice_required);
  EXPECT_EQ(d.consent_id, "named");
}

TEST(DecideAccess, EmergencyAccessOnlyForItsClinicianTreatmentAndCategories) {
  GrantFacts grant{"g",
                   "alice",
                   Bit(v1::DATA_CATEGORY_CONTACT_DETAILS),
                   kNow - absl::Minutes(1),
                   kNow + absl::Hours(4),
                   false};
  const AccessQuery contact{v1::DATA_CATEGORY_CONTACT_DETAILS, v1::PURPOSE_TREATMENT};
  AccessDecision d = DecideAccess({}, {grant}, ClinicianAlice(), contact, kNow);
  EXPECT_TRUE(d.permit);
  EXPECT_EQ(d.reason, v1::ACCESS_REASON_PERMITTED_BY_EMERGENCY_ACCESS);
  EXPECT_EQ(d.emergency_access_id, "g");

  Accessor bob;
  bob.person_subject = "bob";
  bob.identities = {{v1::RECIPIENT_KIND_PERSON, "bob"}, kClinicianRole};
  EXPECT_FALSE(DecideAccess({}, {grant}, bob, contact, kNow).permit);
  EXPECT_FALSE(DecideAccess({}, {grant}, ClinicianAlice(),
                            {v1::DATA_CATEGORY_CONTACT_DETAILS, v1::PURPOSE_BILLING}, kNow)
                   .permit);
  EXPECT_FALSE(DecideAccess({}, {grant}, ClinicianAlice(),
                            {v1::DATA_CATEGORY_APPOINTMENT_STATUS, v1::PURPOSE_TREATMENT}, kNow)
                   .permit);
  EXPECT_FALSE(DecideAccess({}, {grant}, ClinicianAlice(), contact, kNow + absl::Hours(4)).permit);
  grant.ended = true;
  EXPECT_FALSE(DecideAccess({}, {grant}, ClinicianAlice(), contact, kNow).permit);
}

TEST(DecideAccess, RecipientMustMatchAnIdentityOfTheAccessor) {
  ConsentFacts team =
      Permit("t", {v1::RECIPIENT_KIND_TEAM, "on-call"}, {v1::PURPOSE_CARE_COORDINATION},
             {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  EXPECT_FALSE(DecideAccess({team}, {}, ClinicianAlice(), kAppointmentsForCare, kNow).permit);
  Accessor member = ClinicianAlice();
  member.identities.push_back({v1::RECIPIENT_KIND_TEAM, "on-call"});
  EXPECT_TRUE(DecideAccess({team}, {}, member, kAppointmentsForCare, kNow).permit);
}

TEST(Gates, InformationSharingHeldUntilLatestEnd) {
  ConsentFacts a =
      Permit("a", kCounty, {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  a.valid_until = kNow + absl::Hours(5);
  GateOutcome g = EvaluateGate(kGateInformationSharing, {a}, kNow);
  EXPECT_TRUE(g.held);
  EXPECT_EQ(g.reason, v1::GATE_REASON_HELD);
  EXPECT_EQ(g.held_until, kNow + absl::Hours(5));
  EXPECT_EQ(g.consent_ids, std::vector<std::string>{"a"});
}

TEST(Gates, InformationSharingDefeatedByDirective) {
  ConsentFacts a =
      Permit("a", kCounty, {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  ConsentFacts d =
      Deny("d", kCounty, {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  GateOutcome g = EvaluateGate(kGateInformationSharing, {a, d}, kNow);
  EXPECT_FALSE(g.held);
  EXPECT_EQ(g.reason, v1::GATE_REASON_DENIED_BY_DIRECTIVE);
  EXPECT_EQ(g.consent_ids, std::vector<std::string>{"d"});
}

TEST(Gates, InformationSharingReasonsWhenAbsent) {
  EXPECT_EQ(EvaluateGate(kGateInformationSharing, {}, kNow).reason, v1::GATE_REASON_NO_CONSENT);
  ConsentFacts later =
      Permit("l", kCounty, {v1::PURPOSE_TREATMENT}, {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES});
  later.valid_from = kNow + absl::Hours(1);
  GateOutcome g = EvaluateGate(kGateInformationSharing, {later}, kNow);
  EXPECT_EQ(g.reason, v1::GATE_REASON_CONSENT_NOT_YET_VALID);
  EXPECT_EQ(g.holds_from, kNow + absl::Hours(1));
  later.valid_from = kNow - absl::Hours(2);
  later.state = ConsentState::kRevoked;
  EXPECT_EQ(EvaluateGate(kGateInformationSharing, {later}, kNow).reason,
            v1::GATE_REASON_CONSENT_REVOKED);
  later.state = ConsentState::kExpired;
  later.valid_until = kNow - absl::Hours(1);
  EXPECT_EQ(EvaluateGate(kGateInformationSharing, {later}, kNow).reason,
            v1::GATE_REASON_CONSENT_EXPIRED);
}

TEST(Gates, PeerInvolvementNeedsAnAgreementNotDenied) {
  ConsentFacts agreement =
      Permit("a", kPeerRole, {v1::PURPOSE_PEER_SUPPORT}, {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES});
  EXPECT_TRUE(EvaluateGate(kGatePeerInvolvement, {agreement}, kNow).held);
  ConsentFacts deny =
      Deny("d", kPeerRole, {v1::PURPOSE_PEER_SUPPORT}, {v1::DATA_CATEGORY_CONTACT_DETAILS});
  GateOutcome g = EvaluateGate(kGatePeerInvolvement, {agreement, deny}, kNow);
  EXPECT_FALSE(g.held);
  EXPECT_EQ(g.reason, v1::GATE_REASON_DENIED_BY_DIRECTIVE);
  ConsentFacts to_county =
      Permit("c", kCounty, {v1::PURPOSE_PEER_SUPPORT}, {v1::DATA_CATEGORY_CHECK_IN_SUMMARIES});
  EXPECT_FALSE(EvaluateGate(kGatePeerInvolvement, {to_county}, kNow).held);
}

TEST(Gates, AlignedCommunicationNeedsBothCategoriesForOneRecipient) {
  ConsentFacts concerns = Permit("c", kCounty, {v1::PURPOSE_CARE_COORDINATION},
                                 {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS});
  GateOutcome g = EvaluateGate(kGateAlignedCommunication, {concerns}, kNow);
  EXPECT_FALSE(g.held);
  EXPECT_EQ(g.reason, v1::GATE_REASON_INCOMPLETE);
  ConsentFacts other =
      Permit("o", kClinicianRole, {v1::PURPOSE_TREATMENT}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  EXPECT_FALSE(EvaluateGate(kGateAlignedCommunication, {concerns, other}, kNow).held);
  ConsentFacts appointments =
      Permit("a", kCounty, {v1::PURPOSE_TREATMENT}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  appointments.valid_until = kNow + absl::Hours(3);
  g = EvaluateGate(kGateAlignedCommunication, {concerns, other, appointments}, kNow);
  EXPECT_TRUE(g.held);
  EXPECT_EQ(g.held_until, kNow + absl::Hours(3));
  // Not to the peer supporter role.
  ConsentFacts peer =
      Permit("p", kPeerRole, {v1::PURPOSE_CARE_COORDINATION},
             {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS, v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  EXPECT_FALSE(EvaluateGate(kGateAlignedCommunication, {peer}, kNow).held);
}

TEST(Gates, AlignedCommunicationPartlyBlockedByADirectiveSaysSo) {
  const ConsentFacts both =
      Permit("b", kCounty, {v1::PURPOSE_CARE_COORDINATION},
             {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS, v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  const ConsentFacts deny =
      Deny("d", kCounty, {v1::PURPOSE_CARE_COORDINATION}, {v1::DATA_CATEGORY_APPOINTMENT_STATUS});
  const GateOutcome g = EvaluateGate(kGateAlignedCommunication, {both, deny}, kNow);
  EXPECT_FALSE(g.held);
  EXPECT_EQ(g.reason, v1::GATE_REASON_DENIED_BY_DIRECTIVE);
  EXPECT_EQ(g.consent_ids, std::vector<std::string>{"d"});
  // Without the directive's category the gate holds; with nothing for it, it is incomplete.
  EXPECT_TRUE(EvaluateGate(kGateAlignedCommunication, {both}, kNow).held);
  const ConsentFacts concerns_only = Permit("c", kCounty, {v1::PURPOSE_CARE_COORDINATION},
                                            {v1::DATA_CATEGORY_CONCERNS_AND_ESCALATIONS});
  EXPECT_EQ(EvaluateGate(kGateAlignedCommunication, {concerns_only, deny}, kNow).reason,
            v1::GATE_REASON_INCOMPLETE);
}

TEST(ValidateNewConsent, NamesEveryBadField) {
  v1::Consent c;
  c.add_purposes(v1::PURPOSE_UNSPECIFIED);
  c.add_purposes(v1::PURPOSE_TREATMENT);
  c.add_purposes(v1::PURPOSE_TREATMENT);
  c.add_data_categories(static_cast<v1::DataCategory>(42));
  c.mutable_recipient()->set_kind(v1::RECIPIENT_KIND_ROLE);
  c.mutable_recipient()->set_id("wizard");
  c.set_obtained_method(v1::OBTAINED_METHOD_WRITTEN);
  *c.mutable_valid_from() = ToProtoTimestamp(kNow);
  *c.mutable_valid_until() = ToProtoTimestamp(kNow - absl::Hours(1));
  std::set<std::string> fields;
  for (const auto& v : ValidateNewConsent(c, "staff-1", kNow)) fields.insert(v.field);
  for (const char* f : {"consent.participant_id", "consent.given_by", "consent.recipient.id",
                        "consent.purposes[0]", "consent.purposes[2]", "consent.data_categories[0]",
                        "consent.directive", "consent.valid_until", "consent.form_reference"}) {
    EXPECT_TRUE(fields.contains(f)) << f;
  }
  EXPECT_FALSE(fields.contains("consent.purposes[1]"));
}

TEST(ValidateNewConsent, MissingRecipientAndWitness) {
  v1::Consent c;
  c.set_participant_id("p-1");
  c.set_given_by(v1::CONSENT_GIVER_PARTICIPANT);
  c.add_purposes(v1::PURPOSE_TREATMENT);
  c.add_data_categories(v1::DATA_CATEGORY_CONTACT_DETAILS);
  c.set_directive(v1::CONSENT_DIRECTIVE_PERMIT);
  c.set_obtained_method(v1::OBTAINED_METHOD_VERBAL_WITNESSED);
  std::set<std::string> fields;
  for (const auto& v : ValidateNewConsent(c, "staff-1", kNow)) fields.insert(v.field);
  EXPECT_EQ(fields, (std::set<std::string>{"consent.recipient", "consent.witnessed_by"}));
}

TEST(PeerAgreementProblem, OnlyAgreementToPeerInvolvement) {
  v1::Consent c;
  c.set_directive(v1::CONSENT_DIRECTIVE_PERMIT);
  c.add_purposes(v1::PURPOSE_PEER_SUPPORT);
  c.add_data_categories(v1::DATA_CATEGORY_CHECK_IN_SUMMARIES);
  c.mutable_recipient()->set_kind(v1::RECIPIENT_KIND_PERSON);
  c.mutable_recipient()->set_id("peer-7");
  EXPECT_EQ(PeerAgreementProblem(c, "peer-7"), "");
  EXPECT_NE(PeerAgreementProblem(c, "peer-8"), "");
  c.add_purposes(v1::PURPOSE_TREATMENT);
  EXPECT_NE(PeerAgreementProblem(c, "peer-7"), "");
  c.clear_purposes();
  c.add_purposes(v1::PURPOSE_PEER_SUPPORT);
  c.add_data_categories(v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS);
  EXPECT_NE(PeerAgreementProblem(c, "peer-7"), "");
}

}  // namespace
}  // namespace peerpath::consent
