#include "common/audit.h"

#include "common/db.h"
#include "common/log.h"

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

// The row audit_append (migrations/0004) inserts, as one prepared statement of the caller's
// session: the same plan caching without a PL/pgSQL call around it (~50 µs per audited call
// under load, measured with pg_stat_statements).
constexpr char kAuditAppend[] =
    "INSERT INTO audit_log (agency_id, occurred_at, actor, actor_role, action, object_type,"
    "  object_id, participant_id, decision, request_id)"
    " VALUES ($1, clock_timestamp(), coalesce($2, ''), coalesce($3, ''), $4, coalesce($5, ''),"
    "  coalesce($6, ''), coalesce($7, ''), $8, coalesce($9, '')) RETURNING id";

}  // namespace

absl::StatusOr<int64_t> AppendAudit(pqxx::work& tx, const std::string& agency_id,
                                    const AuditEntry& e) {
  return ExecPrepared(tx, "peerpath_audit_insert", kAuditAppend, agency_id, e.actor, e.actor_role,
                      e.action, e.object_type, e.object_id, e.participant_id,
                      DecisionName(e.decision), e.request_id)[0][0]
      .as<int64_t>();
}

void AppendAudit(DeferredWrites& writes, const std::string& agency_id, const AuditEntry& e) {
  writes.Exec("peerpath_audit_insert", kAuditAppend, agency_id, e.actor, e.actor_role, e.action,
              e.object_type, e.object_id, e.participant_id, DecisionName(e.decision), e.request_id);
}

EncodedAudits EncodeAudits(const std::vector<AuditEntry>& entries) {
  std::vector<std::vector<std::string>> columns(8);
  for (auto& column : columns) column.reserve(entries.size());
  for (const AuditEntry& e : entries) {
    columns[0].push_back(e.actor);
    columns[1].push_back(e.actor_role);
    columns[2].push_back(e.action);
    columns[3].push_back(e.object_type);
    columns[4].push_back(e.object_id);
    columns[5].push_back(e.participant_id);
    columns[6].push_back(DecisionName(e.decision));
    columns[7].push_back(e.request_id);
  }
  EncodedAudits encoded{entries.size(), {}};
  for (const auto& column : columns) encoded.columns.push_back(TextArrayLiteral(column));
  return encoded;
}

namespace {

// The rows audit_append would insert (migrations/0004), in one statement; ids follow the order.
template <typename Writes>
void AppendAuditsTo(Writes& writes, const std::string& agency_id, const EncodedAudits& entries) {
  if (entries.count == 0) return;
  const std::vector<std::string>& c = entries.columns;
  writes.Exec(
      "peerpath_audit_insert_rows",
      "INSERT INTO audit_log (agency_id, occurred_at, actor, actor_role, action, object_type,"
      "  object_id, participant_id, decision, request_id)"
      " SELECT $1, clock_timestamp(), a.actor, a.role, a.action, a.object_type, a.object_id,"
      "  a.participant, a.decision, a.request_id FROM unnest($2::text[], $3::text[], $4::text[],"
      "  $5::text[], $6::text[], $7::text[], $8::text[], $9::text[]) WITH ORDINALITY AS"
      "  a(actor, role, action, object_type, object_id, participant, decision, request_id, n)"
      " ORDER BY a.n",
      agency_id, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]);
}

}  // namespace

absl::Status AppendAudits(pqxx::work& tx, const std::string& agency_id,
                          const EncodedAudits& entries) {
  ImmediateWrites writes{tx};
  AppendAuditsTo(writes, agency_id, entries);
  return absl::OkStatus();
}

void AppendAudits(DeferredWrites& writes, const std::string& agency_id,
                  const std::vector<AuditEntry>& entries) {
  AppendAuditsTo(writes, agency_id, EncodeAudits(entries));
}

absl::StatusOr<int> ChainAudit(pqxx::work& tx, int limit) {
  return tx.exec_params1("SELECT audit_chain($1)", limit)[0].as<int>();
}

absl::StatusOr<AuditVerification> VerifyAuditChain(pqxx::work& tx, const std::string& agency_id) {
  AuditVerification result;
  // What has committed but is not chained yet is chained first, so it is checked too.
  if (auto chained = ChainAudit(tx, kChainAllPending); !chained.ok()) return chained.status();
  result.pending = tx.exec_params1(
                         "SELECT count(*) FROM audit_log WHERE agency_id = $1 AND "
                         "seq IS NULL",
                         agency_id)[0]
                       .as<int64_t>();
  // Row by row in seq order: the seq must be the row number, prev_hash the previous row's hash
  // (zeros for the first), and row_hash the hash of prev_hash and the row's canonical text.
  const auto rows = tx.exec_params(
      "SELECT seq, row_number() OVER w AS expected_seq, "
      "prev_hash = coalesce(lag(row_hash) OVER w, decode(repeat('00', 32), 'hex')) AS linked, "
      "row_hash = sha256(prev_hash || convert_to(audit_canonical(a), 'UTF8')) AS intact "
      "FROM audit_log a WHERE agency_id = $1 AND seq IS NOT NULL WINDOW w AS (ORDER BY seq) ORDER "
      "BY seq",
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

AuditChainer::AuditChainer(Database& db, prometheus::Registry& metrics, absl::Duration interval)
    : db_(db),
      interval_(interval),
      chained_(prometheus::BuildCounter()
                   .Name("peerpath_audit_rows_chained_total")
                   .Help("Audit rows given their place in the per-agency hash chain")
                   .Register(metrics)
                   .Add({})) {}

AuditChainer::~AuditChainer() { Stop(); }

void AuditChainer::Start() {
  thread_ = std::thread([this] { Run(); });
}

void AuditChainer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void AuditChainer::Run() {
  absl::Time last_warning = absl::InfinitePast();
  bool stopping = false;
  while (!stopping) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      stopping =
          wake_.wait_for(lock, absl::ToChronoMilliseconds(interval_), [this] { return stopping_; });
    }
    // A full batch means more are waiting: chain again at once. Stopping, one last pass.
    while (true) {
      auto count = db_.Transact([](pqxx::work& tx) { return ChainAudit(tx, kChainBatch); });
      if (!count.ok()) {
        // Before the first migration the function does not exist; the database may be away.
        if (absl::Now() - last_warning > absl::Minutes(1)) {
          log::Warn("audit chaining failed; retrying",
                    {{"error", std::string(count.status().message())}});
          last_warning = absl::Now();
        }
        break;
      }
      chained_.Increment(*count);
      if (*count < kChainBatch) break;
    }
  }
}

}  // namespace peerpath
