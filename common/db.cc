#include "common/db.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/log.h"

namespace peerpath {
namespace {

std::atomic<bool> schema_ready{false};

// SQLSTATEs of a schema not migrated yet: undefined table, column, function or schema.
bool SchemaMissing(const std::string& sqlstate) {
  return sqlstate == "42P01" || sqlstate == "42703" || sqlstate == "42883" || sqlstate == "3F000";
}

// The first line of a PostgreSQL error: its DETAIL and CONTEXT lines can quote row values
// ("Failing row contains (…)"), which may be personal data and stay out of the log.
std::string PrimaryMessage(const char* what) {
  std::string message(what);
  if (const size_t end = message.find('\n'); end != std::string::npos) message.resize(end);
  return message;
}

}  // namespace

void MarkSchemaReady(bool ready) { schema_ready.store(ready); }

absl::Status StatusFromDatabaseException(const std::exception& e) {
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
    return absl::UnavailableError("database connection lost; retry the call");
  }
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
    return absl::UnavailableError(
        "database commit outcome unknown; retry with the same "
        "idempotency key");
  }
  if (dynamic_cast<const pqxx::serialization_failure*>(&e) != nullptr ||
      dynamic_cast<const pqxx::deadlock_detected*>(&e) != nullptr) {
    return absl::AbortedError("concurrent update; retry the transaction");
  }
  if (dynamic_cast<const pqxx::unique_violation*>(&e) != nullptr) {
    return absl::AlreadyExistsError("the object already exists");
  }
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    // The SQLSTATE and primary message stay in the log; the query text, parameters and detail
    // are not logged because they can hold personal data.
    if (!schema_ready.load() && SchemaMissing(sql->sqlstate())) {
      // Background loops start with the process; the migrations may still be running.
      log::Info("database schema not ready yet", {{"sqlstate", sql->sqlstate()}});
    } else {
      log::Error("database error",
                 {{"sqlstate", sql->sqlstate()}, {"error", PrimaryMessage(sql->what())}});
    }
    if (sql->sqlstate() == "57014") return absl::DeadlineExceededError("database query cancelled");
    return absl::InternalError("database error");
  }
  log::Error("unexpected error in transaction", {{"error", e.what()}});
  return absl::InternalError("internal error");
}

namespace {

// `url` with libpq parameter `key` set to `value`, unless it names the key already.
std::string WithParameter(const std::string& url, const std::string& key,
                          const std::string& value) {
  if (url.find(key + "=") != std::string::npos) return url;
  if (absl::StartsWith(url, "postgresql://") || absl::StartsWith(url, "postgres://")) {
    return absl::StrCat(url, url.find('?') == std::string::npos ? "?" : "&", key, "=", value);
  }
  return absl::StrCat(url, url.empty() ? "" : " ", key, "=", value);
}

}  // namespace

std::string WithConnectTimeout(const std::string& url, int seconds) {
  return WithParameter(url, "connect_timeout", std::to_string(std::max(2, seconds)));
}

std::string WithDeadPeerDetection(const std::string& url) {
  std::string out = WithParameter(url, "keepalives_idle", "10");
  out = WithParameter(out, "keepalives_interval", "5");
  out = WithParameter(out, "keepalives_count", "3");
  return WithParameter(out, "tcp_user_timeout", "30000");
}

std::unique_ptr<pqxx::connection> OpenConnection(const DatabaseOptions& options) {
  auto conn = std::make_unique<pqxx::connection>(
      WithDeadPeerDetection(WithConnectTimeout(options.url, options.connect_timeout_seconds)));
  pqxx::nontransaction setup(*conn);
  setup.exec0(absl::StrCat("SET search_path TO ", setup.quote_name(options.schema)));
  setup.exec0(absl::StrCat("SET application_name TO ", setup.quote(options.application_name)));
  setup.exec0(absl::StrCat("SET statement_timeout TO ", options.statement_timeout.count()));
  return conn;
}

Database::Database(DatabaseOptions options) : options_(std::move(options)) {}

Database::~Database() = default;

Database::Lease::~Lease() {
  if (db_ != nullptr) db_->Release(std::move(conn_));
}

int Database::Spare() {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(idle_.size()) + options_.pool_size - open_;
}

int Database::BackgroundWorkers(int at_most) {
  return std::clamp(Spare() - 1, 1, std::max(1, at_most));
}

absl::StatusOr<Database::Lease> Database::Acquire() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    const bool ready = available_.wait_for(lock, options_.acquire_timeout, [this] {
      return !idle_.empty() || open_ < options_.pool_size;
    });
    if (!ready) return absl::UnavailableError("database pool exhausted; retry the call");
    if (!idle_.empty()) {
      auto conn = std::move(idle_.back());
      idle_.pop_back();
      lent_.insert(conn.get());
      return Lease(this, std::move(conn));
    }
    ++open_;  // Reserve the slot, connect outside the lock.
  }
  try {
    auto conn = OpenConnection(options_);
    std::lock_guard<std::mutex> lock(mu_);
    lent_.insert(conn.get());
    return Lease(this, std::move(conn));
  } catch (const std::exception& e) {
    Release(nullptr);
    log::Warn("database connect failed", {{"error", e.what()}});
    return absl::UnavailableError("database unavailable; retry the call");
  }
}

void Database::Release(std::unique_ptr<pqxx::connection> conn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    lent_.erase(conn.get());
    if (conn != nullptr && conn->is_open()) {
      idle_.push_back(std::move(conn));
    } else {
      --open_;
    }
  }
  available_.notify_one();
}

void Database::CancelRunningQueries() {
  std::lock_guard<std::mutex> lock(mu_);
  for (pqxx::connection* conn : lent_) {
    try {
      conn->cancel_query();  // libpqxx documents this as safe from another thread.
    } catch (const std::exception& e) {
      log::Warn("cancelling a query failed", {{"error", e.what()}});
    }
  }
}

absl::Status Database::Ping() {
  return Transact([](pqxx::work& tx) -> absl::Status {
    tx.exec1("SELECT 1");
    return absl::OkStatus();
  });
}

std::string TextArrayLiteral(const std::vector<std::string>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (const char c : values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

std::string IntegerArrayLiteral(const std::vector<int64_t>& values) {
  return absl::StrCat("{", absl::StrJoin(values, ","), "}");
}

namespace {

void AppendBigEndian32(std::string& out, uint32_t v) {
  const char bytes[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                         static_cast<char>(v >> 8), static_cast<char>(v)};
  out.append(bytes, 4);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

BinaryArray::BinaryArray(Of type, size_t reserve_bytes) : type_(type) {
  elements_.reserve(reserve_bytes);
}

void BinaryArray::Element(Of type, uint32_t length) {
  if (type != type_) throw std::logic_error("BinaryArray: an element of another type");
  AppendBigEndian32(elements_, length);
  ++count_;
}

void BinaryArray::AddUuid(absl::string_view text) {
  char bytes[16];
  size_t n = 0;
  bool valid = text.size() == 36;
  for (size_t i = 0; valid && i < text.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      valid = text[i] == '-';
      continue;
    }
    const int high = HexValue(text[i]);
    const int low = i + 1 < text.size() ? HexValue(text[i + 1]) : -1;
    valid = high >= 0 && low >= 0;
    bytes[n++] = static_cast<char>(high << 4 | low);
    ++i;
  }
  if (!valid || n != sizeof bytes) {
    throw std::invalid_argument(absl::StrCat("not a UUID: \"", text.substr(0, 40), "\""));
  }
  Element(Of::kUuid, sizeof bytes);
  elements_.append(bytes, sizeof bytes);
}

void BinaryArray::AddText(absl::string_view text) {
  Element(Of::kText, static_cast<uint32_t>(text.size()));
  elements_.append(text.data(), text.size());
}

void BinaryArray::AddInt4(int32_t value) {
  Element(Of::kInt4, 4);
  AppendBigEndian32(elements_, static_cast<uint32_t>(value));
}

void BinaryArray::AddFloat8(double value) {
  uint64_t bits;
  static_assert(sizeof bits == sizeof value);
  std::memcpy(&bits, &value, sizeof bits);
  Element(Of::kFloat8, 8);
  AppendBigEndian32(elements_, static_cast<uint32_t>(bits >> 32));
  AppendBigEndian32(elements_, static_cast<uint32_t>(bits));
}

void BinaryArray::AddBool(bool value) {
  Element(Of::kBool, 1);
  elements_.push_back(value ? 1 : 0);
}

pqxx::binarystring BinaryArray::Bytes() const {
  // ndim, has-nulls flag, element type; then per dimension its length and lower bound (1). An
  // empty array has no dimension.
  std::string out;
  out.reserve(20 + elements_.size());
  AppendBigEndian32(out, count_ == 0 ? 0 : 1);
  AppendBigEndian32(out, 0);
  AppendBigEndian32(out, static_cast<uint32_t>(type_));
  if (count_ > 0) {
    AppendBigEndian32(out, static_cast<uint32_t>(count_));
    AppendBigEndian32(out, 1);
  }
  out += elements_;
  return pqxx::binarystring(out);
}

namespace {

// Calls at(position, n) for every parameter $n of `sql` (n ≥ 1; "$" followed by digits), in
// order, after checking it has an argument among `arguments`.
template <typename At>
void ForEachParameter(const std::string& sql, size_t arguments, At at) {
  for (size_t i = 0; i < sql.size(); ++i) {
    if (sql[i] != '$' || i + 1 >= sql.size() || !absl::ascii_isdigit(sql[i + 1])) continue;
    size_t j = i + 1;
    size_t n = 0;
    while (j < sql.size() && absl::ascii_isdigit(sql[j])) n = n * 10 + (sql[j++] - '0');
    if (n == 0 || n > arguments) {
      throw std::invalid_argument("DeferredWrites: statement parameter out of range");
    }
    at(i, j, n);
    i = j - 1;
  }
}

}  // namespace

std::string DeferredWrites::FloatLiteral(double value) {
  if (std::isnan(value)) return "'NaN'";
  if (std::isinf(value)) return value > 0 ? "'Infinity'" : "'-Infinity'";
  return absl::StrFormat("%.17g", value);
}

void DeferredWrites::Append(const std::string& sql, const std::vector<std::string>& literals) {
  std::string statement;
  size_t copied = 0;
  ForEachParameter(sql, literals.size(), [&](size_t begin, size_t end, size_t n) {
    statement.append(sql, copied, begin - copied);
    statement += literals[n - 1];
    copied = end;
  });
  statement.append(sql, copied, std::string::npos);
  if (!batch_.empty()) batch_ += ";\n";
  batch_ += statement;
}

void DeferredWrites::AppendExecute(const char* name, const std::string& sql,
                                   const std::vector<std::string>& literals) {
  ForEachParameter(sql, literals.size(), [](size_t, size_t, size_t) {});
  // Prepared on this connection at the first use of `name` (one round trip, once).
  tx_.conn().prepare(name, sql);
  tx_.conn().prepare_now(name);
  if (!batch_.empty()) batch_ += ";\n";
  absl::StrAppend(&batch_, "EXECUTE ", tx_.quote_name(name));
  if (!literals.empty()) absl::StrAppend(&batch_, "(", absl::StrJoin(literals, ", "), ")");
}

void DeferredWrites::Flush() {
  if (batch_.empty()) return;
  tx_.exec(batch_);  // The last statement may return rows (an audit row's RETURNING id).
  batch_.clear();
}

}  // namespace peerpath
