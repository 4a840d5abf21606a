#include "services/consent/store.h"

#include <google/protobuf/descriptor.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/db.h"
#include "common/time_util.h"

namespace peerpath::consent::store {
namespace {

using google::protobuf::EnumDescriptor;

// A timestamptz column as microseconds since the epoch (exact).
#define PP_MICROS(col) "(extract(epoch FROM " col ") * 1000000)::bigint"
// Parameter $n (text: microseconds, or '' for NULL) as a timestamptz.
#define PP_TS(n)                                                   \
  "(CASE WHEN " n " = '' THEN NULL ELSE timestamptz 'epoch' + (" n \
  ")::bigint * interval '1 microsecond' END)"

constexpr char kConsentColumns[] =
    "id::text, participant_id, given_by, recipient_kind, recipient_id, "
    "array_to_string(purposes, ','), array_to_string(data_categories, ','), directive, " PP_MICROS(
        "valid_from") ", " PP_MICROS("valid_until") ", obtained_method, obtained_by, "
                                                    "coalesce(witnessed_by, ''), coalesce(form_"
                                                    "reference, ''), status, " PP_MICROS(
                                                        "created_at") ", created_by, " PP_MICROS("revoked_at") ", coalesce(revoked_by, ''), coalesce(revocation_reason, ''), " PP_MICROS("expired_at") ", agency_id";

constexpr char kDisclosureColumns[] =
    "id::text, participant_id, disclosed_by, disclosed_by_role, recipient_kind, recipient_id, "
    "purpose, array_to_string(data_categories, ','), coalesce(consent_id::text, ''), "
    "coalesce(emergency_access_id::text, ''), redisclosure_notice, " PP_MICROS(
        "disclosed_at") ", agency_id";

constexpr char kAccessColumns[] =
    "id::text, participant_id, clinician_id, concern_id::text, reason, "
    "array_to_string(data_categories, ','), " PP_MICROS("granted_at") ", " PP_MICROS(
        "expires_at") ", " PP_MICROS("ended_at") ", " PP_MICROS("reviewed_at") ", "
                                                                               "coalesce(reviewed_"
                                                                               "by, ''), "
                                                                               "coalesce(review_"
                                                                               "outcome, ''), "
                                                                               "coalesce(review_"
                                                                               "note, ''), "
                                                                               "agency_id";

std::string EnumText(const EnumDescriptor* d, int value, absl::string_view prefix) {
  const auto* v = d->FindValueByNumber(value);
  if (v == nullptr) return "";
  return absl::AsciiStrToLower(absl::string_view(v->name()).substr(prefix.size()));
}

int EnumValue(const EnumDescriptor* d, absl::string_view text, absl::string_view prefix) {
  const auto* v = d->FindValueByName(absl::StrCat(prefix, absl::AsciiStrToUpper(text)));
  return v == nullptr ? 0 : v->number();
}

int Purpose(absl::string_view t) { return EnumValue(v1::Purpose_descriptor(), t, "PURPOSE_"); }
int Category(absl::string_view t) {
  return EnumValue(v1::DataCategory_descriptor(), t, "DATA_CATEGORY_");
}
int Kind(absl::string_view t) {
  return EnumValue(v1::RecipientKind_descriptor(), t, "RECIPIENT_KIND_");
}

std::string Micros(absl::Time t) { return absl::StrCat(absl::ToUnixMicros(t)); }
std::string OptMicros(absl::Time t) {
  return t == absl::InfiniteFuture() || t == absl::InfinitePast() ? "" : Micros(t);
}
absl::Time TimeOf(const pqxx::field& f, absl::Time if_null) {
  return f.is_null() ? if_null : absl::FromUnixMicros(f.as<int64_t>());
}
bool Set(const pqxx::field& f) { return !f.is_null(); }
google::protobuf::Timestamp Ts(const pqxx::field& f) {
  return ToProtoTimestamp(absl::FromUnixMicros(f.as<int64_t>()));
}

template <typename Add>
void ForEachListed(const pqxx::field& f, Add add) {
  for (absl::string_view part : absl::StrSplit(f.c_str(), ',', absl::SkipEmpty())) add(part);
}

v1::Consent ConsentOf(const pqxx::row& r) {
  v1::Consent c;
  c.set_consent_id(r[0].c_str());
  c.set_participant_id(r[1].c_str());
  c.set_given_by(static_cast<v1::ConsentGiver>(
      EnumValue(v1::ConsentGiver_descriptor(), r[2].c_str(), "CONSENT_GIVER_")));
  c.mutable_recipient()->set_kind(static_cast<v1::RecipientKind>(Kind(r[3].c_str())));
  c.mutable_recipient()->set_id(r[4].c_str());
  ForEachListed(r[5],
                [&](absl::string_view p) { c.add_purposes(static_cast<v1::Purpose>(Purpose(p))); });
  ForEachListed(r[6], [&](absl::string_view p) {
    c.add_data_categories(static_cast<v1::DataCategory>(Category(p)));
  });
  c.set_directive(static_cast<v1::ConsentDirective>(
      EnumValue(v1::ConsentDirective_descriptor(), r[7].c_str(), "CONSENT_DIRECTIVE_")));
  *c.mutable_valid_from() = Ts(r[8]);
  if (Set(r[9])) *c.mutable_valid_until() = Ts(r[9]);
  c.set_obtained_method(static_cast<v1::ObtainedMethod>(
      EnumValue(v1::ObtainedMethod_descriptor(), r[10].c_str(), "OBTAINED_METHOD_")));
  c.set_obtained_by(r[11].c_str());
  c.set_witnessed_by(r[12].c_str());
  c.set_form_reference(r[13].c_str());
  c.set_status(static_cast<v1::ConsentStatus>(
      EnumValue(v1::ConsentStatus_descriptor(), r[14].c_str(), "CONSENT_STATUS_")));
  *c.mutable_created_at() = Ts(r[15]);
  c.set_created_by(r[16].c_str());
  if (Set(r[17])) *c.mutable_revoked_at() = Ts(r[17]);
  c.set_revoked_by(r[18].c_str());
  c.set_revocation_reason(r[19].c_str());
  if (Set(r[20])) *c.mutable_expired_at() = Ts(r[20]);
  c.set_agency_id(r[21].c_str());
  const absl::Time now = absl::Now();
  c.set_in_effect(c.status() == v1::CONSENT_STATUS_ACTIVE &&
                  FromProtoTimestamp(c.valid_from()) <= now &&
                  (!c.has_valid_until() || now < FromProtoTimestamp(c.valid_until())));
  return c;
}

v1::Disclosure DisclosureOf(const pqxx::row& r) {
  v1::Disclosure d;
  d.set_disclosure_id(r[0].c_str());
  d.set_participant_id(r[1].c_str());
  d.set_disclosed_by(r[2].c_str());
  d.set_disclosed_by_role(r[3].c_str());
  d.mutable_recipient()->set_kind(static_cast<v1::RecipientKind>(Kind(r[4].c_str())));
  d.mutable_recipient()->set_id(r[5].c_str());
  d.set_purpose(static_cast<v1::Purpose>(Purpose(r[6].c_str())));
  ForEachListed(r[7], [&](absl::string_view p) {
    d.add_data_categories(static_cast<v1::DataCategory>(Category(p)));
  });
  d.set_consent_id(r[8].c_str());
  d.set_emergency_access_id(r[9].c_str());
  d.set_redisclosure_notice(r[10].as<bool>());
  *d.mutable_disclosed_at() = Ts(r[11]);
  d.set_agency_id(r[12].c_str());
  return d;
}

v1::EmergencyAccess AccessOf(const pqxx::row& r) {
  v1::EmergencyAccess a;
  a.set_emergency_access_id(r[0].c_str());
  a.set_participant_id(r[1].c_str());
  a.set_clinician_id(r[2].c_str());
  a.set_concern_id(r[3].c_str());
  a.set_reason(r[4].c_str());
  ForEachListed(r[5], [&](absl::string_view p) {
    a.add_data_categories(static_cast<v1::DataCategory>(Category(p)));
  });
  *a.mutable_granted_at() = Ts(r[6]);
  *a.mutable_expires_at() = Ts(r[7]);
  if (Set(r[8])) *a.mutable_ended_at() = Ts(r[8]);
  if (Set(r[9])) *a.mutable_reviewed_at() = Ts(r[9]);
  a.set_reviewed_by(r[10].c_str());
  a.set_review_outcome(static_cast<v1::EmergencyAccessReviewOutcome>(
      EnumValue(v1::EmergencyAccessReviewOutcome_descriptor(), r[11].c_str(),
                "EMERGENCY_ACCESS_REVIEW_OUTCOME_")));
  a.set_review_note(r[12].c_str());
  a.set_agency_id(r[13].c_str());
  if (a.has_ended_at()) {
    a.set_state(v1::EMERGENCY_ACCESS_STATE_ENDED);
  } else if (FromProtoTimestamp(a.expires_at()) <= absl::Now()) {
    a.set_state(v1::EMERGENCY_ACCESS_STATE_EXPIRED);
  } else {
    a.set_state(v1::EMERGENCY_ACCESS_STATE_ACTIVE);
  }
  return a;
}

template <typename Repeated, typename ToText>
std::string ListLiteral(const Repeated& values, ToText to_text) {
  std::vector<std::string> texts;
  for (int v : values) texts.push_back(to_text(v));
  return TextArrayLiteral(texts);
}

}  // namespace

std::string PurposeText(int p) { return EnumText(v1::Purpose_descriptor(), p, "PURPOSE_"); }
std::string CategoryText(int c) {
  return EnumText(v1::DataCategory_descriptor(), c, "DATA_CATEGORY_");
}
std::string StatusText(int s) {
  return EnumText(v1::ConsentStatus_descriptor(), s, "CONSENT_STATUS_");
}
std::string StateText(int s) {
  return EnumText(v1::EmergencyAccessState_descriptor(), s, "EMERGENCY_ACCESS_STATE_");
}
std::string OutcomeText(int o) {
  return EnumText(v1::EmergencyAccessReviewOutcome_descriptor(), o,
                  "EMERGENCY_ACCESS_REVIEW_OUTCOME_");
}
std::string KindText(int k) {
  return EnumText(v1::RecipientKind_descriptor(), k, "RECIPIENT_KIND_");
}

v1::Consent InsertConsent(pqxx::work& tx, const std::string& agency_id, const v1::Consent& c,
                          const std::string& created_by, absl::Time now) {
  const pqxx::row r = tx.exec_params1(
      absl::StrCat(
          "INSERT INTO consents (agency_id, participant_id, given_by, recipient_kind, "
          "recipient_id, purposes, data_categories, directive, valid_from, valid_until, "
          "obtained_method, obtained_by, witnessed_by, form_reference, created_at, created_by) "
          "VALUES ($1, $2, $3, $4, $5, $6::text[], $7::text[], $8, ",
          PP_TS("$9"), ", ", PP_TS("$10"), ", $11, $12, NULLIF($13, ''), NULLIF($14, ''), ",
          PP_TS("$15"), ", $16) RETURNING ", kConsentColumns),
      agency_id, c.participant_id(),
      EnumText(v1::ConsentGiver_descriptor(), c.given_by(), "CONSENT_GIVER_"),
      KindText(c.recipient().kind()), c.recipient().id(), ListLiteral(c.purposes(), PurposeText),
      ListLiteral(c.data_categories(), CategoryText),
      EnumText(v1::ConsentDirective_descriptor(), c.directive(), "CONSENT_DIRECTIVE_"),
      Micros(FromProtoTimestamp(c.valid_from())),
      c.has_valid_until() ? Micros(FromProtoTimestamp(c.valid_until())) : std::string(),
      EnumText(v1::ObtainedMethod_descriptor(), c.obtained_method(), "OBTAINED_METHOD_"),
      c.obtained_by(), c.witnessed_by(), c.form_reference(), Micros(now), created_by);
  return ConsentOf(r);
}

std::optional<v1::Consent> GetConsent(pqxx::work& tx, const std::string& consent_id) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kConsentColumns, " FROM consents WHERE id = $1::uuid"), consent_id);
  if (r.empty()) return std::nullopt;
  return ConsentOf(r[0]);
}

ConsentPage ListConsents(pqxx::work& tx, const std::string& participant_id,
                         const std::vector<std::string>& statuses, int64_t after_created_micros,
                         const std::string& after_id, int limit) {
  const pqxx::result r =
      tx.exec_params(absl::StrCat("SELECT ", kConsentColumns,
                                  " FROM consents WHERE agency_id = " PEERPATH_SQL_SCOPED_AGENCY
                                  " AND participant_id = $1"
                                  " AND (cardinality($2::text[]) = 0 OR status = ANY ($2::text[]))"
                                  " AND (NULLIF($4, '') IS NULL OR (created_at, id) < (",
                                  PP_TS("$3"),
                                  ", NULLIF($4, '')::uuid))"
                                  " ORDER BY created_at DESC, id DESC LIMIT $5"),
                     participant_id, TextArrayLiteral(statuses), absl::StrCat(after_created_micros),
                     after_id, limit + 1);
  ConsentPage page;
  for (const auto& row : r) {
    if (static_cast<int>(page.consents.size()) == limit) {
      page.more = true;
      break;
    }
    page.consents.push_back(ConsentOf(row));
  }
  return page;
}

std::optional<v1::Consent> RevokeConsent(pqxx::work& tx, const std::string& consent_id,
                                         const std::string& revoked_by, const std::string& reason,
                                         absl::Time now) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("UPDATE consents SET status = 'revoked', revoked_at = ", PP_TS("$2"),
                   ", revoked_by = $3, revocation_reason = $4"
                   " WHERE id = $1::uuid AND status = 'active' AND (valid_until IS NULL OR "
                   "valid_until > ",
                   PP_TS("$2"), ") RETURNING ", kConsentColumns),
      consent_id, Micros(now), revoked_by, reason);
  if (r.empty()) return std::nullopt;
  return ConsentOf(r[0]);
}

namespace {

// Rows of LoadDecisionInputs' query and of the decision_inputs function (same columns).
DecisionInputs DecisionInputsOf(const pqxx::result& r) {
  DecisionInputs out;
  for (const auto& row : r) {
    uint32_t categories = 0;
    ForEachListed(row[5], [&](absl::string_view c) { categories |= Bit(Category(c)); });
    if (row[0].c_str()[0] == 'm') continue;  // peer_decision_inputs' relationship row.
    if (row[0].c_str()[0] == 'e') {
      GrantFacts g;
      g.id = row[1].c_str();
      g.clinician_id = row[3].c_str();
      g.categories = categories;
      g.granted_at = TimeOf(row[7], absl::InfinitePast());
      g.expires_at = TimeOf(row[8], absl::InfinitePast());
      g.ended = row[11].as<bool>();
      out.grants.push_back(std::move(g));
      continue;
    }
    ConsentFacts c;
    c.id = row[1].c_str();
    c.recipient.kind = static_cast<RecipientKind>(Kind(row[2].c_str()));
    c.recipient.id = row[3].c_str();
    ForEachListed(row[4], [&](absl::string_view p) { c.purposes |= Bit(Purpose(p)); });
    c.categories = categories;
    c.directive =
        std::string_view(row[6].c_str()) == "deny" ? Directive::kDeny : Directive::kPermit;
    c.valid_from = TimeOf(row[7], absl::InfinitePast());
    c.valid_until = TimeOf(row[8], absl::InfiniteFuture());
    const std::string_view status = row[9].c_str();
    c.state = status == "active"    ? ConsentState::kActive
              : status == "revoked" ? ConsentState::kRevoked
                                    : ConsentState::kExpired;
    c.revoked_at = TimeOf(row[10], absl::InfinitePast());
    out.consents.push_back(std::move(c));
  }
  return out;
}

}  // namespace

DecisionInputs LoadDecisionInputs(pqxx::work& tx, const std::string& participant_id,
                                  const std::string& clinician_subject, bool lock) {
  return DecisionInputsOf(tx.exec_params(
      absl::StrCat(
          "SELECT 'c', id::text, recipient_kind, recipient_id, array_to_string(purposes, ','), "
          "array_to_string(data_categories, ','), directive, ",
          PP_MICROS("valid_from"), ", ", PP_MICROS("valid_until"), ", status, ",
          PP_MICROS("revoked_at"),
          ", false FROM (SELECT * FROM consents WHERE agency_id = " PEERPATH_SQL_SCOPED_AGENCY
          " AND participant_id = $1",
          lock ? " FOR SHARE" : "",
          ") c UNION ALL "
          "SELECT 'e', id::text, 'person', clinician_id, 'treatment', "
          "array_to_string(data_categories, ','), 'permit', ",
          PP_MICROS("granted_at"), ", ", PP_MICROS("expires_at"),
          ", 'active', NULL, ended_at IS NOT NULL FROM emergency_accesses WHERE "
          "participant_id = $1 AND $2 <> '' AND clinician_id = $2 AND ended_at IS NULL AND "
          "expires_at > now()"),
      participant_id, clinician_subject));
}

DecisionInputs ReadDecisionInputs(pqxx::nontransaction& tx, const std::string& agency_id,
                                  const std::string& participant_id,
                                  const std::string& clinician_subject) {
  return DecisionInputsOf(ExecPrepared(tx, "consent_decision_inputs",
                                       "SELECT * FROM decision_inputs($1, $2, $3)", agency_id,
                                       participant_id, clinician_subject));
}

std::optional<DecisionInputs> ReadPeerDecisionInputs(pqxx::nontransaction& tx,
                                                     const std::string& agency_id,
                                                     const std::string& participant_id,
                                                     const std::string& supporter_subject) {
  const pqxx::result r = ExecPrepared(tx, "consent_peer_decision_inputs",
                                      "SELECT * FROM peer_decision_inputs($1, $2, $3)", agency_id,
                                      participant_id, supporter_subject);
  for (const auto& row : r) {
    if (std::string_view(row[0].c_str()) == "m") return DecisionInputsOf(r);
  }
  return std::nullopt;
}

v1::Disclosure InsertDisclosure(pqxx::work& tx, const std::string& agency_id,
                                const v1::Disclosure& d) {
  const pqxx::row r = tx.exec_params1(
      absl::StrCat("INSERT INTO disclosures (agency_id, participant_id, disclosed_by, "
                   "disclosed_by_role, recipient_kind, recipient_id, purpose, data_categories, "
                   "consent_id, emergency_access_id, redisclosure_notice, disclosed_at) VALUES "
                   "($1, $2, $3, $4, $5, $6, $7, $8::text[], NULLIF($9, '')::uuid, "
                   "NULLIF($10, '')::uuid, $11, ",
                   PP_TS("$12"), ") RETURNING ", kDisclosureColumns),
      agency_id, d.participant_id(), d.disclosed_by(), d.disclosed_by_role(),
      KindText(d.recipient().kind()), d.recipient().id(), PurposeText(d.purpose()),
      ListLiteral(d.data_categories(), CategoryText), d.consent_id(), d.emergency_access_id(),
      d.redisclosure_notice(), Micros(FromProtoTimestamp(d.disclosed_at())));
  return DisclosureOf(r);
}

DisclosurePage ListDisclosures(pqxx::work& tx, const std::string& participant_id, absl::Time from,
                               absl::Time to, int64_t after_micros, const std::string& after_id,
                               int limit) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kDisclosureColumns, " FROM disclosures WHERE participant_id = $1",
                   " AND ($2 = '' OR disclosed_at >= ", PP_TS("$2"), ")",
                   " AND ($3 = '' OR disclosed_at < ", PP_TS("$3"), ")",
                   " AND (NULLIF($5, '') IS NULL OR (disclosed_at, id) > (", PP_TS("$4"),
                   ", NULLIF($5, '')::uuid)) ORDER BY disclosed_at, id LIMIT $6"),
      participant_id, OptMicros(from), OptMicros(to), absl::StrCat(after_micros), after_id,
      limit + 1);
  DisclosurePage page;
  for (const auto& row : r) {
    if (static_cast<int>(page.disclosures.size()) == limit) {
      page.more = true;
      break;
    }
    page.disclosures.push_back(DisclosureOf(row));
  }
  return page;
}

v1::EmergencyAccess InsertEmergencyAccess(pqxx::work& tx, const std::string& agency_id,
                                          const v1::EmergencyAccess& a, absl::Time now) {
  const pqxx::row r = tx.exec_params1(
      absl::StrCat("INSERT INTO emergency_accesses (agency_id, participant_id, clinician_id, "
                   "concern_id, reason, data_categories, granted_at, expires_at) VALUES "
                   "($1, $2, $3, $4::uuid, $5, $6::text[], ",
                   PP_TS("$7"), ", ", PP_TS("$8"), ") RETURNING ", kAccessColumns),
      agency_id, a.participant_id(), a.clinician_id(), a.concern_id(), a.reason(),
      ListLiteral(a.data_categories(), CategoryText), Micros(now),
      Micros(FromProtoTimestamp(a.expires_at())));
  return AccessOf(r);
}

std::optional<v1::EmergencyAccess> GetEmergencyAccess(pqxx::work& tx, const std::string& id,
                                                      bool for_update) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("SELECT ", kAccessColumns, " FROM emergency_accesses WHERE id = $1::uuid",
                   for_update ? " FOR UPDATE" : ""),
      id);
  if (r.empty()) return std::nullopt;
  return AccessOf(r[0]);
}

EmergencyAccessPage ListEmergencyAccesses(pqxx::work& tx, const EmergencyAccessFilter& f,
                                          const std::string& visible_clinician,
                                          int64_t after_micros, const std::string& after_id,
                                          int limit) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat(
          "WITH page AS (SELECT ", kAccessColumns, ", granted_at AS g, id AS i",
          " FROM emergency_accesses WHERE ($1 OR reviewed_at IS NULL)"
          " AND ($2 = '' OR participant_id = $2) AND ($3 = '' OR clinician_id = $3)"
          " AND ($4 = '' OR granted_at >= ",
          PP_TS("$4"), ") AND ($5 = '' OR granted_at < ", PP_TS("$5"),
          ") AND (cardinality($6::text[]) = 0 OR (CASE WHEN ended_at IS NOT NULL THEN 'ended' "
          "WHEN expires_at <= now() THEN 'expired' ELSE 'active' END) = ANY ($6::text[]))"
          " AND (NULLIF($8, '') IS NULL OR (granted_at, id) > (",
          PP_TS("$7"),
          ", NULLIF($8, '')::uuid)) ORDER BY granted_at, id LIMIT $9) "
          "SELECT page.*, (SELECT count(*) FROM emergency_accesses WHERE reviewed_at IS NULL "
          "AND ($10 = '' OR clinician_id = $10)) FROM (SELECT 1) one LEFT JOIN page ON true "
          "ORDER BY page.g, page.i"),
      f.include_reviewed, f.participant_id, f.clinician_id, OptMicros(f.granted_from),
      OptMicros(f.granted_to), TextArrayLiteral(f.states), absl::StrCat(after_micros), after_id,
      limit + 1, visible_clinician);
  EmergencyAccessPage page;
  for (const auto& row : r) {
    page.unreviewed = row[16].as<int>();
    if (row[0].is_null()) continue;
    if (static_cast<int>(page.accesses.size()) == limit) {
      page.more = true;
      continue;
    }
    page.accesses.push_back(AccessOf(row));
  }
  return page;
}

v1::EmergencyAccess ReviewEmergencyAccess(pqxx::work& tx, const std::string& id,
                                          const std::string& reviewer, const std::string& outcome,
                                          const std::string& note, bool end_now, absl::Time now) {
  const pqxx::row r = tx.exec_params1(
      absl::StrCat("UPDATE emergency_accesses SET reviewed_at = ", PP_TS("$2"),
                   ", reviewed_by = $3, review_outcome = $4, review_note = NULLIF($5, ''), "
                   "ended_at = CASE WHEN $6 AND ended_at IS NULL AND expires_at > ",
                   PP_TS("$2"), " THEN ", PP_TS("$2"),
                   " ELSE ended_at END WHERE id = $1::uuid RETURNING ", kAccessColumns),
      id, Micros(now), reviewer, outcome, note, end_now);
  return AccessOf(r);
}

std::optional<ConcernFacts> GetConcern(pqxx::work& tx, const std::string& concern_id) {
  // FOR SHARE: a closing that has written the row is waited for (and then seen), and one that
  // comes later waits until this transaction's grant is committed, to end it (see
  // RecordConcernClosed).
  const pqxx::result r = tx.exec_params(
      "SELECT participant_id, immediate_safety, closed_at IS NOT NULL FROM safety_concerns "
      "WHERE concern_id = $1 FOR SHARE",
      concern_id);
  if (r.empty()) return std::nullopt;
  return ConcernFacts{r[0][0].c_str(), r[0][1].as<bool>(), r[0][2].as<bool>()};
}

void RecordConcernOpened(pqxx::work& tx, const std::string& agency_id,
                         const std::string& concern_id, const std::string& participant_id,
                         bool immediate_safety) {
  tx.exec_params0(
      "INSERT INTO safety_concerns (agency_id, concern_id, participant_id, immediate_safety) "
      "VALUES ($1, $2, $3, $4) ON CONFLICT (agency_id, concern_id) DO NOTHING",
      agency_id, concern_id, participant_id, immediate_safety);
}

void RecordConcernClosed(pqxx::work& tx, const std::string& agency_id,
                         const std::string& concern_id, const std::string& participant_id) {
  // Two statements: the first waits for a break-glass request that has the concern FOR SHARE
  // (GetConcern) to commit, and the second, with a snapshot taken after it, ends its grant too.
  tx.exec_params0(
      "INSERT INTO safety_concerns (agency_id, concern_id, participant_id, immediate_safety, "
      "closed_at) VALUES ($1, $2, $3, false, now()) ON CONFLICT (agency_id, concern_id) DO "
      "UPDATE SET closed_at = coalesce(safety_concerns.closed_at, now())",
      agency_id, concern_id, participant_id);
  tx.exec_params0(
      "UPDATE emergency_accesses SET ended_at = now() WHERE concern_id::text = $1 "
      "AND ended_at IS NULL AND expires_at > now()",
      concern_id);
}

std::vector<std::string> AgenciesWithEndedConsents(pqxx::work& tx) {
  std::vector<std::string> out;
  for (const auto& row : tx.exec("SELECT DISTINCT agency_id FROM consents WHERE status = 'active' "
                                 "AND valid_until IS NOT NULL AND valid_until <= now()")) {
    out.push_back(row[0].c_str());
  }
  return out;
}

std::vector<v1::Consent> ExpireConsents(pqxx::work& tx, int limit) {
  const pqxx::result r = tx.exec_params(
      absl::StrCat("UPDATE consents SET status = 'expired', expired_at = now() WHERE id IN ("
                   "SELECT id FROM consents WHERE status = 'active' AND valid_until IS NOT NULL "
                   "AND valid_until <= now() ORDER BY valid_until LIMIT $1 FOR UPDATE SKIP "
                   "LOCKED) AND status = 'active' RETURNING ",
                   kConsentColumns),
      limit);
  std::vector<v1::Consent> out;
  for (const auto& row : r) out.push_back(ConsentOf(row));
  return out;
}

}  // namespace peerpath::consent::store
