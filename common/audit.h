#pragma once

// The audit log (common/migrations/0001_audit_log.sql): append in the same transaction as the
// action it records; verify the per-agency hash chain.

#include <cstdint>
#include <pqxx/pqxx>
#include <string>

#include "absl/status/statusor.h"

namespace peerpath {

enum class AuditDecision { kAllowed, kDenied, kBreakGlass };

struct AuditEntry {
  std::string actor;        // The caller's subject.
  std::string actor_role;   // The role the decision was made under.
  std::string action;       // "<service>.<Rpc>" or a finer action name.
  std::string object_type;  // e.g. "consent"; empty when none.
  std::string object_id;
  std::string participant_id;  // The participant whose data was touched; empty when none.
  AuditDecision decision = AuditDecision::kAllowed;
  std::string request_id;
};

// Appends one row for `agency_id` inside `tx` (one round trip); returns its sequence number.
// The transaction must be scoped to the same agency (Database::TransactForAgency).
absl::StatusOr<int64_t> AppendAudit(pqxx::work& tx, const std::string& agency_id,
                                    const AuditEntry& entry);

struct AuditVerification {
  int64_t rows_checked = 0;
  int64_t first_broken_seq = 0;  // 0: the chain is intact.
  std::string problem;           // Why that row breaks the chain.
};

// Recomputes the chain of `agency_id` (scoped transaction) and reports the first broken row:
// a changed row (hash mismatch), a removed row (gap in seq) or a re-linked row (prev_hash).
absl::StatusOr<AuditVerification> VerifyAuditChain(pqxx::work& tx, const std::string& agency_id);

}  // namespace peerpath
