#pragma once

// A small connection pool over libpqxx and the one way services run SQL: Transact().
//
// libpq allows one thread per connection at a time, so every call borrows a connection for the
// length of one transaction. Database failures become absl::Status codes a caller can act on:
// UNAVAILABLE (connection lost or pool exhausted: retry the call), ABORTED (serialization failure
// or deadlock: retry the transaction), ALREADY_EXISTS (unique violation), INTERNAL (anything else;
// the SQL error is logged, never returned to clients).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// SQL for parameter $n, given as microseconds since the epoch (int64), as a timestamptz; exact.
#define PEERPATH_SQL_TIME_PARAM(n) \
  "(timestamptz 'epoch' + $" #n "::bigint * interval '1 microsecond')"
// SQL for a timestamptz expression as microseconds since the epoch (bigint): date_part's double
// is exact to the microsecond for any time of this century, and cheaper than extract's numeric.
#define PEERPATH_SQL_MICROS(column) "(date_part('epoch', " column ") * 1000000)::bigint"

namespace peerpath {

struct DatabaseOptions {
  std::string url;     // libpq connection URI.
  std::string schema;  // The service's own schema; becomes the search_path of every connection.
  int pool_size = 8;
  std::chrono::milliseconds acquire_timeout{5000};
  std::string application_name = "peerpath";
  // statement_timeout of every connection: no query of a call outlives the longest call.
  std::chrono::milliseconds statement_timeout{30000};
  // libpq's connect_timeout (whole seconds, at least 2): a database host that drops packets or
  // never answers fails the connection instead of holding the caller for the TCP timeout.
  int connect_timeout_seconds = 5;
};

// `url` with libpq's connect_timeout added (URI or key=value form), unless it names one already.
std::string WithConnectTimeout(const std::string& url, int seconds);
// `url` with TCP keepalives (probes after 10 s idle, every 5 s, 3 unanswered drop it) and
// tcp_user_timeout (30 s of unacknowledged data drops it), unless it names them: a database host
// that vanishes mid-session (a network partition, a powered-off node) fails the connection in
// about half a minute instead of the operating system's hours, so a call or a listener waiting
// on it learns and moves on. Ignored by libpq for Unix-domain sockets.
std::string WithDeadPeerDetection(const std::string& url);

// Maps an exception thrown by libpqxx (or anything else) inside a transaction to a status, and
// logs SQL errors (SQLSTATE and the primary message only).
absl::Status StatusFromDatabaseException(const std::exception& e);

// Says the service's schema is migrated (server start-up, once the migrations ran): until then a
// missing table or function is logged as "schema not ready yet" (info), not as an error. The
// flag is process-wide; `ready` false is for tests of the start-up state.
void MarkSchemaReady(bool ready = true);

// A PostgreSQL array literal of text values for a `$n::text[]` parameter: every element quoted,
// with `"` and `\` escaped, so any text (commas, braces, quotes, "NULL") arrives as itself.
std::string TextArrayLiteral(const std::vector<std::string>& values);
// The same for a `$n::integer[]` or `$n::bigint[]` parameter.
std::string IntegerArrayLiteral(const std::vector<int64_t>& values);

// A one-dimensional array in PostgreSQL's binary format (what array_send writes), for a
// `$n::uuid[]`, `$n::text[]`, `$n::integer[]`, `$n::double precision[]` or `$n::boolean[]`
// parameter passed as Bytes(). PostgreSQL copies binary elements instead of parsing text (array
// syntax, quoting, uuid and float parsing): for arrays of thousands of elements that parsing was
// most of a statement's bind time. Elements are added in order, all of the array's type.
class BinaryArray {
 public:
  enum class Of : uint32_t { kBool = 16, kInt4 = 23, kText = 25, kFloat8 = 701, kUuid = 2950 };

  explicit BinaryArray(Of type, size_t reserve_bytes = 0);

  // A UUID in its text form (8-4-4-4-12 hex digits); throws std::invalid_argument otherwise.
  void AddUuid(absl::string_view text);
  void AddText(absl::string_view text);
  void AddInt4(int32_t value);
  void AddFloat8(double value);
  void AddBool(bool value);

  size_t size() const { return count_; }
  // The array as a binary parameter (libpqxx sends a binarystring in binary format).
  pqxx::binarystring Bytes() const;

 private:
  // Checks the type and writes an element's length; its bytes follow.
  void Element(Of type, uint32_t length);

  Of type_;
  size_t count_ = 0;
  std::string elements_;
};

// Runs a statement prepared once per connection under `name`: parsed and planned by PostgreSQL
// once per connection rather than at every call (as exec_params is). Every use of one `name`
// must pass the same `sql`.
template <typename... Args>
pqxx::result ExecPrepared(pqxx::transaction_base& tx, const char* name, const std::string& sql,
                          Args&&... args) {
  tx.conn().prepare(name, sql);
  return tx.exec_prepared(name, std::forward<Args>(args)...);
}

// How PostgreSQL plans the prepared statements of a transaction.
enum class Plans {
  // Its own choice: a custom plan for the first five executions on a connection, then the
  // generic plan unless its estimated cost is higher than the custom plans' average.
  kAsPostgresChooses,
  // Always the generic plan (plan_cache_mode, local to the transaction): for a statement whose
  // generic plan is as good but is estimated dearer (an unnest of array parameters is estimated
  // at ten rows in it, the actual count in a custom plan), which PostgreSQL would otherwise plan
  // afresh at every execution, at several times the cost of running it. With no sequential scan
  // where an index serves, as kIndexScans: a generic plan is made once per connection, and one
  // made while a table was small is kept as it grows.
  kGeneric,
  // Its own choice, but no sequential scan where an index serves (enable_seqscan off, local to
  // the transaction): for statements that look rows up by key in a table that grows fast. The
  // plan a connection caches for a prepared statement is kept until the table is analysed again;
  // one made while the table held a few pages (a sequential scan, cheaper on paper than an index
  // lookup) reads the whole table at every execution as it grows, until autovacuum catches up.
  kIndexScans,
};

// Sets `name` to `value` for the rest of `tx` (set_config, local to the transaction), with a
// statement prepared once per connection; `plans` in the same statement.
inline void ScopeToSetting(pqxx::transaction_base& tx, const char* name, const std::string& value,
                           Plans plans = Plans::kAsPostgresChooses) {
  struct Scope {
    const char* name;
    const char* sql;
  };
  // In the order of Plans.
  static constexpr Scope kScopes[] = {
      {"peerpath_scope", "SELECT set_config($1, $2, true)"},
      {"peerpath_scope_generic_plans",
       "SELECT set_config($1, $2, true), "
       "set_config('plan_cache_mode', 'force_generic_plan', true), "
       "set_config('enable_seqscan', 'off', true)"},
      {"peerpath_scope_index_scans",
       "SELECT set_config($1, $2, true), set_config('enable_seqscan', 'off', true)"},
  };
  const Scope& scope = kScopes[static_cast<int>(plans)];
  ExecPrepared(tx, scope.name, scope.sql, name, value);
}

// Scopes the rest of `tx` to `agency_id` for row-level security (app.agency_id), `plans` with it.
inline void ScopeToAgency(pqxx::transaction_base& tx, const std::string& agency_id,
                          Plans plans = Plans::kAsPostgresChooses) {
  ScopeToSetting(tx, "app.agency_id", agency_id, plans);
}

// SQL for the agency a transaction is scoped to (ScopeToAgency), for a query to name in its
// WHERE clause ("agency_id = " PEERPATH_SQL_SCOPED_AGENCY). Row-level security admits no other
// agency's rows anyway; a query of a table with a second read policy (a sweeper's or a replay's)
// names it too, because PostgreSQL joins a table's policies with OR, and an index that starts
// with agency_id cannot start from an OR: the query would read that index whole, every agency's
// entries, for the few rows it wants.
#define PEERPATH_SQL_SCOPED_AGENCY "current_setting('app.agency_id')"

// Writes whose results nobody reads, sent together: each Exec renders its statement with the
// arguments as quoted literals (tx.quote: escaped by libpq for this connection), and Flush sends
// them all in one round trip, in order, inside the caller's transaction. A write path that ends
// with several such writes (events, audit row, stored response…) pays one round trip for them.
// A named statement goes as EXECUTE of the statement prepared under that name on the connection
// (prepared at its first Exec there, as ExecPrepared would: every use of one `name` must pass the
// same `sql`), so PostgreSQL neither parses nor plans it again; an unnamed one ("") goes as its
// text with the literals in place of its parameters. Statements run at Flush: an error there
// aborts the transaction as any other statement would.
class DeferredWrites {
 public:
  explicit DeferredWrites(pqxx::transaction_base& tx) : tx_(tx) {}
  DeferredWrites(const DeferredWrites&) = delete;
  DeferredWrites& operator=(const DeferredWrites&) = delete;

  // `sql` uses $1, $2… as a prepared statement would (the same signature as ExecPrepared, so one
  // write function serves both). Throws std::invalid_argument, sending nothing, when `sql` names
  // a parameter without an argument.
  template <typename... Args>
  void Exec(const char* name, const std::string& sql, const Args&... args) {
    const std::vector<std::string> literals{Literal(args)...};
    if (name[0] == '\0') {
      Append(sql, literals);
    } else {
      AppendExecute(name, sql, literals);
    }
  }

  // Sends everything added since the last Flush (nothing to send: no round trip).
  void Flush();
  bool empty() const { return batch_.empty(); }

 private:
  std::string Literal(const std::string& value) { return tx_.quote(value); }
  std::string Literal(const char* value) { return tx_.quote(std::string(value)); }
  std::string Literal(const pqxx::binarystring& value) {
    return tx_.quote_raw(value.data(), value.size());
  }
  std::string Literal(bool value) { return value ? "true" : "false"; }
  template <typename Number, typename = std::enable_if_t<std::is_arithmetic_v<Number>>>
  std::string Literal(Number value) {
    if constexpr (std::is_floating_point_v<Number>) {
      return FloatLiteral(static_cast<double>(value));
    } else {
      return std::to_string(value);
    }
  }
  // Every digit a double needs to read back as itself; NaN and the infinities as quoted text.
  static std::string FloatLiteral(double value);
  void Append(const std::string& sql, const std::vector<std::string>& literals);
  void AppendExecute(const char* name, const std::string& sql,
                     const std::vector<std::string>& literals);

  pqxx::transaction_base& tx_;
  std::string batch_;
};

// The immediate counterpart of DeferredWrites: Exec runs the prepared statement at once.
struct ImmediateWrites {
  pqxx::transaction_base& tx;
  template <typename... Args>
  void Exec(const char* name, const std::string& sql, Args&&... args) {
    ExecPrepared(tx, name, sql, std::forward<Args>(args)...);
  }
};

// Opens a connection with the session settings every PeerPath connection has (search_path,
// application_name). Throws pqxx exceptions.
std::unique_ptr<pqxx::connection> OpenConnection(const DatabaseOptions& options);

class Database {
 public:
  explicit Database(DatabaseOptions options);
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  ~Database();

  // Runs fn(pqxx::work&) in one transaction scoped to `agency_id`: row-level security lets the
  // transaction see and write only that agency's rows (SET LOCAL app.agency_id). fn returns
  // absl::Status or absl::StatusOr<T>; the transaction commits only when that is OK. `plans`
  // says how its prepared statements are planned.
  template <typename Fn>
  auto TransactForAgency(const std::string& agency_id, Fn&& fn,
                         Plans plans = Plans::kAsPostgresChooses)
      -> std::invoke_result_t<Fn, pqxx::work&> {
    using Result = std::invoke_result_t<Fn, pqxx::work&>;
    if (agency_id.empty()) return Result(absl::InternalError("transaction without an agency"));
    return Transact([&](pqxx::work& tx) -> Result {
      ScopeToAgency(tx, agency_id, plans);
      return fn(tx);
    });
  }

  // Runs fn in one transaction that reads the event log of every agency (the outbox policy
  // `event_log_*`): only the event log reader and position assigner use it.
  template <typename Fn>
  auto TransactForEventLog(Fn&& fn) -> std::invoke_result_t<Fn, pqxx::work&> {
    return TransactWithSetting("app.event_log", "on", std::forward<Fn>(fn));
  }

  // Runs fn in one transaction allowed to clean up expired rows of every agency (policies named
  // `maintenance_*`, which also say what counts as expired).
  template <typename Fn>
  auto TransactForMaintenance(Fn&& fn) -> std::invoke_result_t<Fn, pqxx::work&> {
    return TransactWithSetting("app.maintenance", "on", std::forward<Fn>(fn));
  }

  // Runs fn in one transaction with no agency set: tenant tables then show no rows. Only for
  // tables without tenant data (the migrations ledger) and health checks.
  template <typename Fn>
  auto Transact(Fn&& fn) -> std::invoke_result_t<Fn, pqxx::work&> {
    using Result = std::invoke_result_t<Fn, pqxx::work&>;
    auto lease = Acquire();
    if (!lease.ok()) return Result(lease.status());
    try {
      pqxx::work tx(lease->connection());
      Result result = fn(tx);
      if (result.ok()) tx.commit();
      return result;
    } catch (const std::exception& e) {
      return Result(StatusFromDatabaseException(e));
    }
  }

  // Runs fn(pqxx::nontransaction&) on a pooled connection without BEGIN or COMMIT: each
  // statement is a transaction of its own and no agency is set, so tenant tables show no rows
  // unless the statement itself scopes to an agency (a function that sets app.agency_id first).
  // For reads that must cost a single round trip.
  template <typename Fn>
  auto RunWithoutTransaction(Fn&& fn) -> std::invoke_result_t<Fn, pqxx::nontransaction&> {
    using Result = std::invoke_result_t<Fn, pqxx::nontransaction&>;
    auto lease = Acquire();
    if (!lease.ok()) return Result(lease.status());
    try {
      pqxx::nontransaction tx(lease->connection());
      return fn(tx);
    } catch (const std::exception& e) {
      return Result(StatusFromDatabaseException(e));
    }
  }

  template <typename Fn>
  auto TransactWithSetting(const char* name, const char* value, Fn&& fn,
                           Plans plans = Plans::kAsPostgresChooses)
      -> std::invoke_result_t<Fn, pqxx::work&> {
    using Result = std::invoke_result_t<Fn, pqxx::work&>;
    return Transact([&](pqxx::work& tx) -> Result {
      ScopeToSetting(tx, name, value, plans);
      return fn(tx);
    });
  }

  // Checks the database answers (SELECT 1) on a pooled connection.
  absl::Status Ping();

  // Asks PostgreSQL to cancel every statement running on a lent-out connection; their
  // transactions fail with DEADLINE_EXCEEDED. Used when the shutdown grace period ends.
  void CancelRunningQueries();

  const DatabaseOptions& options() const { return options_; }

  // Connections to be had at once right now: idle ones and those not opened yet. A hint for
  // callers that would spread work over extra connections (it may change before they ask).
  int Spare();

  // Connections a background task that spreads its work (a backlog of deadlines or pages) may
  // use at once: the spare ones but one, left to the calls; at least one, at most `at_most`.
  int BackgroundWorkers(int at_most = 4);

 private:
  class Lease {
   public:
    Lease(Database* db, std::unique_ptr<pqxx::connection> conn) : db_(db), conn_(std::move(conn)) {}
    Lease(Lease&& other) noexcept
        : db_(std::exchange(other.db_, nullptr)), conn_(std::move(other.conn_)) {}
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    pqxx::connection& connection() { return *conn_; }

   private:
    Database* db_;
    std::unique_ptr<pqxx::connection> conn_;
  };

  absl::StatusOr<Lease> Acquire();
  // Takes a connection back; a closed one (lost during use) is dropped and its slot freed.
  void Release(std::unique_ptr<pqxx::connection> conn);

  const DatabaseOptions options_;
  std::mutex mu_;
  std::condition_variable available_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;
  std::set<pqxx::connection*> lent_;
  int open_ = 0;  // Connections lent out or idle.
};

}  // namespace peerpath
