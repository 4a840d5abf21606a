#pragma once

// Every SQL statement of the consent service, and nothing else. Each function runs inside the
// caller's transaction (scoped to one agency unless it says otherwise) in one round trip.

#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "peerpath/consent/v1/consent.pb.h"
#include "services/consent/access.h"

namespace peerpath::consent::store {

// Consents: `consent` carries every input field already defaulted (valid_from, obtained_by).
v1::Consent InsertConsent(pqxx::work& tx, const std::string& agency_id, const v1::Consent& consent,
                          const std::string& created_by, absl::Time now);
std::optional<v1::Consent> GetConsent(pqxx::work& tx, const std::string& consent_id);

struct ConsentPage {
  std::vector<v1::Consent> consents;
  bool more = false;
};
// Newest first; after the cursor (created_at micros, id) when given.
ConsentPage ListConsents(pqxx::work& tx, const std::string& participant_id,
                         const std::vector<std::string>& statuses, int64_t after_created_micros,
                         const std::string& after_id, int limit);

// Marks an ACTIVE consent REVOKED; nullopt when it is not ACTIVE (or does not exist).
std::optional<v1::Consent> RevokeConsent(pqxx::work& tx, const std::string& consent_id,
                                         const std::string& revoked_by, const std::string& reason,
                                         absl::Time now);

struct DecisionInputs {
  std::vector<ConsentFacts> consents;
  std::vector<GrantFacts> grants;
};
// All consents of a participant and the live grants of `clinician_subject` (empty: none) for
// them, in one statement. With `lock`, the consent rows are locked FOR SHARE until commit, so a
// revocation cannot slip between the decision and what the caller writes on it.
DecisionInputs LoadDecisionInputs(pqxx::work& tx, const std::string& participant_id,
                                  const std::string& clinician_subject, bool lock);
// The same, read outside an explicit transaction in one round trip: the decision_inputs function
// scopes itself to `agency_id` (Database::RunWithoutTransaction). Nothing is locked.
DecisionInputs ReadDecisionInputs(pqxx::nontransaction& tx, const std::string& agency_id,
                                  const std::string& participant_id,
                                  const std::string& clinician_subject);
// For a peer supporter (`supporter_subject`), the same in one round trip with their relationship:
// nullopt when they are not actively matched with the participant (peer_decision_inputs).
std::optional<DecisionInputs> ReadPeerDecisionInputs(pqxx::nontransaction& tx,
                                                     const std::string& agency_id,
                                                     const std::string& participant_id,
                                                     const std::string& supporter_subject);

// Disclosures.
v1::Disclosure InsertDisclosure(pqxx::work& tx, const std::string& agency_id,
                                const v1::Disclosure& disclosure);
struct DisclosurePage {
  std::vector<v1::Disclosure> disclosures;
  bool more = false;
};
// Oldest first, disclosed_at in [from, to), after the cursor (disclosed_at micros, id).
DisclosurePage ListDisclosures(pqxx::work& tx, const std::string& participant_id, absl::Time from,
                               absl::Time to, int64_t after_micros, const std::string& after_id,
                               int limit);

// Emergency accesses.
v1::EmergencyAccess InsertEmergencyAccess(pqxx::work& tx, const std::string& agency_id,
                                          const v1::EmergencyAccess& access, absl::Time now);
std::optional<v1::EmergencyAccess> GetEmergencyAccess(pqxx::work& tx, const std::string& id,
                                                      bool for_update);
struct EmergencyAccessFilter {
  bool include_reviewed = false;
  std::string participant_id;
  std::string clinician_id;
  absl::Time granted_from = absl::InfinitePast();
  absl::Time granted_to = absl::InfiniteFuture();
  std::vector<std::string> states;  // "active", "expired", "ended"; empty: all.
};
struct EmergencyAccessPage {
  std::vector<v1::EmergencyAccess> accesses;
  bool more = false;
  int unreviewed = 0;  // Unreviewed grants visible to the caller (clinician filter only).
};
EmergencyAccessPage ListEmergencyAccesses(pqxx::work& tx, const EmergencyAccessFilter& filter,
                                          const std::string& visible_clinician,
                                          int64_t after_micros, const std::string& after_id,
                                          int limit);
// Records a review; ends a live grant when `end_now`.
v1::EmergencyAccess ReviewEmergencyAccess(pqxx::work& tx, const std::string& id,
                                          const std::string& reviewer, const std::string& outcome,
                                          const std::string& note, bool end_now, absl::Time now);

// Safety concerns (the local view of the escalation service).
struct ConcernFacts {
  std::string participant_id;
  bool immediate_safety = false;
  bool closed = false;
};
// The concern, locked FOR SHARE until the transaction ends: a break-glass grant decided on an open
// concern commits before the concern's closing can end its grants.
std::optional<ConcernFacts> GetConcern(pqxx::work& tx, const std::string& concern_id);
void RecordConcernOpened(pqxx::work& tx, const std::string& agency_id,
                         const std::string& concern_id, const std::string& participant_id,
                         bool immediate_safety);
// Marks the concern closed and ends the live grants it justified.
void RecordConcernClosed(pqxx::work& tx, const std::string& agency_id,
                         const std::string& concern_id, const std::string& participant_id);

// Expiry sweeper. AgenciesWithEndedConsents runs in a maintenance transaction (every agency);
// ExpireConsents in a transaction scoped to one agency: marks up to `limit` ACTIVE consents whose
// period has ended EXPIRED (skipping rows another sweeper holds) and returns them.
std::vector<std::string> AgenciesWithEndedConsents(pqxx::work& tx);
std::vector<v1::Consent> ExpireConsents(pqxx::work& tx, int limit);

// Enum names as stored (lower_snake_case) and back.
std::string PurposeText(int purpose);
std::string CategoryText(int category);
std::string StatusText(int status);
std::string StateText(int state);
std::string OutcomeText(int outcome);
std::string KindText(int kind);

}  // namespace peerpath::consent::store
