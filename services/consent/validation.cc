#include "services/consent/validation.h"

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/time_util.h"

namespace peerpath::consent {

bool IsConsentRole(absl::string_view role) {
  static const auto* const roles = new std::set<std::string, std::less<>>{
      "peer_supporter", "supervisor", "clinician", "case_manager", "program_admin", "integration"};
  return roles->contains(role);
}

void CheckId(absl::string_view value, const std::string& field, Violations& out) {
  if (value.empty()) {
    out.push_back({field, "required"});
  } else if (value.size() > 128) {
    out.push_back({field, "at most 128 characters"});
  }
}

void CheckUuid(absl::string_view value, const std::string& field, Violations& out) {
  if (value.empty()) {
    out.push_back({field, "required"});
  } else if (!IsUuid(value)) {
    out.push_back({field, "must be a UUID"});
  }
}

void CheckRecipient(const v1::Recipient& recipient, const std::string& field, Violations& out) {
  if (recipient.kind() == v1::RECIPIENT_KIND_UNSPECIFIED ||
      !v1::RecipientKind_IsValid(recipient.kind())) {
    out.push_back({field + ".kind", "required: ROLE, TEAM, PERSON or ORGANIZATION"});
  }
  CheckId(recipient.id(), field + ".id", out);
  if (recipient.kind() == v1::RECIPIENT_KIND_ROLE && !recipient.id().empty() &&
      !IsConsentRole(recipient.id())) {
    out.push_back({field + ".id",
                   "unknown role: one of peer_supporter, supervisor, clinician, case_manager, "
                   "program_admin, integration"});
  }
}

void CheckActor(const v1::Actor& actor, const std::string& field, Violations& out) {
  CheckId(actor.subject(), field + ".subject", out);
  if (actor.roles_size() > 10) out.push_back({field + ".roles", "at most 10 roles"});
  for (int i = 0; i < actor.roles_size(); ++i) {
    const std::string& role = actor.roles(i);
    if (!IsConsentRole(role) && role != "operations" && role != "service") {
      out.push_back({absl::StrCat(field, ".roles[", i, "]"), "unknown role"});
    }
  }
  if (actor.team_ids_size() > 50) out.push_back({field + ".team_ids", "at most 50 teams"});
  for (int i = 0; i < actor.team_ids_size(); ++i) {
    CheckId(actor.team_ids(i), absl::StrCat(field, ".team_ids[", i, "]"), out);
  }
}

void CheckPurpose(int purpose, const std::string& field, Violations& out) {
  if (purpose == v1::PURPOSE_UNSPECIFIED || !v1::Purpose_IsValid(purpose)) {
    out.push_back({field, "required: a known purpose"});
  }
}

bool CheckTimestamp(const google::protobuf::Timestamp& t, const std::string& field,
                    Violations& out) {
  constexpr int64_t kYear1 = -62135596800;     // 0001-01-01T00:00:00Z
  constexpr int64_t kYear9999 = 253402300799;  // 9999-12-31T23:59:59Z
  if (t.seconds() < kYear1 || t.seconds() > kYear9999) {
    out.push_back({field, "must be between the years 0001 and 9999"});
    return false;
  }
  if (t.nanos() < 0 || t.nanos() > 999999999) {
    out.push_back({field, "nanos must be between 0 and 999,999,999"});
    return false;
  }
  return true;
}

void CheckTimeRange(const common::v1::TimeRange& range, const std::string& field, Violations& out) {
  const std::string start = field + ".start_time", end = field + ".end_time";
  const bool ok = (!range.has_start_time() || CheckTimestamp(range.start_time(), start, out)) &&
                  (!range.has_end_time() || CheckTimestamp(range.end_time(), end, out));
  if (ok && range.has_start_time() && range.has_end_time() &&
      FromProtoTimestamp(range.end_time()) <= FromProtoTimestamp(range.start_time())) {
    out.push_back({end, "must be after " + start});
  }
}

void CheckCategory(int category, const std::string& field, Violations& out) {
  if (category == v1::DATA_CATEGORY_UNSPECIFIED || !v1::DataCategory_IsValid(category)) {
    out.push_back({field, "required: a known data category"});
  }
}

void CheckCategories(const google::protobuf::RepeatedField<int>& categories,
                     const std::string& field, int max, Violations& out) {
  if (categories.empty()) {
    out.push_back({field, "at least one data category is required"});
    return;
  }
  if (categories.size() > max) out.push_back({field, absl::StrCat("at most ", max, " values")});
  std::set<int> seen;
  for (int i = 0; i < categories.size(); ++i) {
    const std::string name = absl::StrCat(field, "[", i, "]");
    if (categories[i] == v1::DATA_CATEGORY_UNSPECIFIED ||
        !v1::DataCategory_IsValid(categories[i])) {
      out.push_back({name, "unspecified or unknown data category"});
    } else if (!seen.insert(categories[i]).second) {
      out.push_back({name, "repeated data category"});
    }
  }
}

Violations ValidateNewConsent(const v1::Consent& consent, absl::string_view caller_subject,
                              absl::Time now) {
  Violations out;
  CheckId(consent.participant_id(), "consent.participant_id", out);
  if (consent.given_by() == v1::CONSENT_GIVER_UNSPECIFIED ||
      !v1::ConsentGiver_IsValid(consent.given_by())) {
    out.push_back({"consent.given_by", "required: PARTICIPANT or LEGAL_REPRESENTATIVE"});
  }
  if (!consent.has_recipient()) {
    out.push_back({"consent.recipient", "required"});
  } else {
    CheckRecipient(consent.recipient(), "consent.recipient", out);
  }
  if (consent.purposes().empty()) {
    out.push_back({"consent.purposes", "at least one purpose is required"});
  } else {
    if (consent.purposes_size() > 5) out.push_back({"consent.purposes", "at most 5 values"});
    std::set<int> seen;
    for (int i = 0; i < consent.purposes_size(); ++i) {
      const std::string name = absl::StrCat("consent.purposes[", i, "]");
      const int p = consent.purposes(i);
      if (p == v1::PURPOSE_UNSPECIFIED || !v1::Purpose_IsValid(p)) {
        out.push_back({name, "unspecified or unknown purpose"});
      } else if (!seen.insert(p).second) {
        out.push_back({name, "repeated purpose"});
      }
    }
  }
  CheckCategories(consent.data_categories(), "consent.data_categories", 6, out);
  if (consent.directive() == v1::CONSENT_DIRECTIVE_UNSPECIFIED ||
      !v1::ConsentDirective_IsValid(consent.directive())) {
    out.push_back({"consent.directive", "required: PERMIT or DENY"});
  }
  const bool from_ok =
      !consent.has_valid_from() || CheckTimestamp(consent.valid_from(), "consent.valid_from", out);
  const bool until_ok = !consent.has_valid_until() ||
                        CheckTimestamp(consent.valid_until(), "consent.valid_until", out);
  const absl::Time from = consent.has_valid_from() ? FromProtoTimestamp(consent.valid_from()) : now;
  if (from_ok && until_ok && consent.has_valid_until()) {
    const absl::Time until = FromProtoTimestamp(consent.valid_until());
    if (until <= from) {
      out.push_back({"consent.valid_until", "must be after valid_from"});
    } else if (until <= now) {
      out.push_back({"consent.valid_until", "is already past"});
    }
  }
  const std::string obtained_by =
      consent.obtained_by().empty() ? std::string(caller_subject) : consent.obtained_by();
  if (obtained_by.size() > 128) {
    out.push_back({"consent.obtained_by", "at most 128 characters"});
  }
  switch (consent.obtained_method()) {
    case v1::OBTAINED_METHOD_WRITTEN:
      if (consent.form_reference().empty()) {
        out.push_back({"consent.form_reference", "required for a written consent"});
      }
      break;
    case v1::OBTAINED_METHOD_VERBAL_WITNESSED:
      if (consent.witnessed_by().empty()) {
        out.push_back({"consent.witnessed_by", "required for a verbal consent"});
      } else if (consent.witnessed_by() == obtained_by) {
        out.push_back({"consent.witnessed_by", "must differ from obtained_by"});
      }
      break;
    case v1::OBTAINED_METHOD_ELECTRONIC:
      break;
    default:
      out.push_back(
          {"consent.obtained_method", "required: WRITTEN, VERBAL_WITNESSED or ELECTRONIC"});
  }
  if (consent.witnessed_by().size() > 128) {
    out.push_back({"consent.witnessed_by", "at most 128 characters"});
  }
  if (consent.form_reference().size() > 256) {
    out.push_back({"consent.form_reference", "at most 256 characters"});
  }
  return out;
}

std::string PeerAgreementProblem(const v1::Consent& consent, absl::string_view subject) {
  if (consent.directive() != v1::CONSENT_DIRECTIVE_PERMIT) {
    return "a peer supporter may record only an agreement to peer involvement (directive PERMIT)";
  }
  if (consent.purposes_size() != 1 || consent.purposes(0) != v1::PURPOSE_PEER_SUPPORT) {
    return "a peer supporter may record only an agreement to peer involvement (purposes exactly "
           "PEER_SUPPORT)";
  }
  const v1::Recipient& r = consent.recipient();
  const bool to_role = r.kind() == v1::RECIPIENT_KIND_ROLE && r.id() == "peer_supporter";
  const bool to_self = r.kind() == v1::RECIPIENT_KIND_PERSON && r.id() == subject;
  if (!to_role && !to_self) {
    return "a peer supporter may record only an agreement to peer involvement (recipient the "
           "role peer_supporter or themselves)";
  }
  for (int c : consent.data_categories()) {
    if (c == v1::DATA_CATEGORY_SUBSTANCE_USE_TREATMENT_RECORDS) {
      return "a peer supporter may not record consent to substance-use treatment records";
    }
  }
  return "";
}

}  // namespace peerpath::consent
