#include "common/audit.h"

#include "common/db.h"

namespace peerpath {
namespace {

const char* DecisionName(AuditDecision decision) {
  switch (decision) {
    case AuditDecision::kAllowed:
      return "allowed";
    case AuditDecision::kDenied:
      return "denied";
    case AuditDecision::kBreakGlass:
      return "break_glass";
  }
  return "allowed";
}

}  // namespace

absl::StatusOr<int64_t> AppendAudit(pqxx::work& tx, const std::string& agency_id,
                                    const AuditEntry& e) {
  return tx
      .exec_params1("SELECT audit_append($1, $2, $3, $4, $5, $6, $7, $8, $9)", agency_id, e.actor,
                    e.actor_role, e.action, e.object_type, e.object_id, e.participant_id,
                    DecisionName(e.decision), e.request_id)[0]
      .as<int64_t>();
}

absl::StatusOr<AuditVerification> VerifyAuditChain(pqxx::work& tx, const std::string& agency_id) {
  AuditVerification result;
  // Row by row in seq order: the seq must be the row number, prev_hash the previous row's hash
  // (zeros for the first), and row_hash the hash of prev_hash and the row's canonical text.
  const auto rows = tx.exec_params(
      "SELECT seq, row_number() OVER w AS expected_seq, "
      "prev_hash = coalesce(lag(row_hash) OVER w, decode(repeat('00', 32), 'hex')) AS linked, "
      "row_hash = sha256(prev_hash || convert_to(audit_canonical(a), 'UTF8')) AS intact "
      "FROM audit_log a WHERE agency_id = $1 WINDOW w AS (ORDER BY seq) ORDER BY seq",
      agency_id);
  for (const auto& row : rows) {
    ++result.rows_checked;
    const int64_t seq = row[0].as<int64_t>();
    if (seq != row[1].as<int64_t>()) {
      result.first_broken_seq = row[1].as<int64_t>();
      result.problem = "row missing (sequence gap)";
      break;
    }
    if (!row[2].as<bool>()) {
      result.first_broken_seq = seq;
      result.problem = "previous-hash link broken";
      break;
    }
    if (!row[3].as<bool>()) {
      result.first_broken_seq = seq;
      result.problem = "row content does not match its hash";
      break;
    }
  }
  return result;
}

}  // namespace peerpath
