#pragma once

// The audit log (common/migrations/0001_audit_log.sql, 0004_audit_chain_after_commit.sql): append
// in the same transaction as the action it records; chain committed rows per agency (AuditChainer,
// in every service); verify the per-agency hash chain.

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/db.h"

namespace peerpath {

class Database;

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

// Appends one row for `agency_id` inside `tx` (one round trip, no lock); returns its row id. The
// row receives its place in the agency's chain (seq and hashes) after commit, from ChainAudit.
// The transaction must be scoped to the same agency (Database::TransactForAgency).
absl::StatusOr<int64_t> AppendAudit(pqxx::work& tx, const std::string& agency_id,
                                    const AuditEntry& entry);
// The same, sent with the caller's other deferred writes (DeferredWrites::Flush).
void AppendAudit(DeferredWrites& writes, const std::string& agency_id, const AuditEntry& entry);

// Many rows encoded as AppendAudits sends them: the entries' columns as text[] literals. Encoding
// needs no transaction, so a batch writer may encode while its transaction runs another statement.
struct EncodedAudits {
  size_t count = 0;
  std::vector<std::string> columns;
};
EncodedAudits EncodeAudits(const std::vector<AuditEntry>& entries);

// AppendAudit for many rows in one round trip (batch writers such as matching's AssignBatch), in
// the order they were encoded.
absl::Status AppendAudits(pqxx::work& tx, const std::string& agency_id,
                          const EncodedAudits& entries);
// The same, sent with the caller's other deferred writes (DeferredWrites::Flush).
void AppendAudits(DeferredWrites& writes, const std::string& agency_id,
                  const std::vector<AuditEntry>& entries);

inline constexpr int kChainBatch = 5000;
inline constexpr int kChainAllPending = 1 << 30;

// Chains up to `limit` committed, unchained rows per agency (any agency: the function runs as
// the table's owner); returns how many. Agencies another session is chaining are skipped.
absl::StatusOr<int> ChainAudit(pqxx::work& tx, int limit);

// Chains the audit log every `interval` on a thread of its own, until Stop().
class AuditChainer {
 public:
  AuditChainer(Database& db, prometheus::Registry& metrics, absl::Duration interval);
  AuditChainer(const AuditChainer&) = delete;
  AuditChainer& operator=(const AuditChainer&) = delete;
  ~AuditChainer();
  void Start();
  void Stop();

 private:
  void Run();

  Database& db_;
  const absl::Duration interval_;
  prometheus::Counter& chained_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
};

struct AuditVerification {
  int64_t rows_checked = 0;
  int64_t pending = 0;           // Rows not chained yet (another session was chaining them).
  int64_t first_broken_seq = 0;  // 0: the chain is intact.
  std::string problem;           // Why that row breaks the chain.
};

// Chains what is pending, then recomputes the chain of `agency_id` (scoped transaction) and
// reports the first broken row:
// a changed row (hash mismatch), a removed row (gap in seq) or a re-linked row (prev_hash).
absl::StatusOr<AuditVerification> VerifyAuditChain(pqxx::work& tx, const std::string& agency_id);

}  // namespace peerpath
