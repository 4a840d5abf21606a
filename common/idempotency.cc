#include "common/idempotency.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <openssl/evp.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace peerpath {
namespace {

bool IsKeyCharacter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == ':' || c == '-';
}

}  // namespace

std::string DeterministicBytes(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  message.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

absl::Status ValidateIdempotencyKey(absl::string_view key, absl::string_view field) {
  if (key.empty()) {
    return InvalidArgument("idempotency key missing",
                           {{std::string(field),
                             "required: a client-generated key (a UUID is recommended) that "
                             "makes retries safe"}});
  }
  if (key.size() > 128 || !std::all_of(key.begin(), key.end(), IsKeyCharacter)) {
    return InvalidArgument(
        "idempotency key malformed",
        {{std::string(field), "must be 1 to 128 characters of [A-Za-z0-9_.:-]"}});
  }
  return absl::OkStatus();
}

std::string RequestFingerprint(const google::protobuf::Message& request,
                               const std::string& caller) {
  const std::string bytes = absl::StrCat(caller, std::string(1, '\0'), DeterministicBytes(request));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest), length);
}

std::string RequestFingerprintHex(const IdempotentCall& call) {
  return absl::BytesToHexString(RequestFingerprint(*call.request, call.caller));
}

absl::Status ReplayStoredCall(const IdempotentCall& call, const StoredIdempotentCall& stored,
                              google::protobuf::Message& response) {
  if (stored.method != call.method) {
    return absl::FailedPreconditionError(absl::StrCat("idempotency_key was already used for ",
                                                      stored.method,
                                                      "; use a new key for each distinct call"));
  }
  if (stored.request_hash_hex != RequestFingerprintHex(call)) {
    return absl::FailedPreconditionError(
        "idempotency_key was already used with a different request or by another caller; use a "
        "new key for each distinct call, and the same request when retrying");
  }
  // PostgreSQL's base64 breaks lines every 76 characters; absl's decoder skips no whitespace.
  std::string encoded = stored.response_base64;
  encoded.erase(std::remove(encoded.begin(), encoded.end(), '\n'), encoded.end());
  std::string bytes;
  if (!absl::Base64Unescape(encoded, &bytes) || !response.ParseFromString(bytes)) {
    return absl::InternalError("stored response of an idempotent call is unreadable");
  }
  return absl::OkStatus();
}

namespace {

// The claim: $1 agency, $2 key, $3 method, $4 the request's fingerprint (RequestFingerprintHex);
// returns a row when the key is now claimed.
constexpr char kClaimIdempotencyKeySql[] =
    "INSERT INTO idempotency_keys (agency_id, idempotency_key, method, request_hash, response) "
    "VALUES ($1, $2, $3, decode($4, 'hex'), '') ON CONFLICT DO NOTHING RETURNING 1";

}  // namespace

absl::StatusOr<bool> ClaimIdempotencyKey(pqxx::work& tx, const IdempotentCall& call,
                                         google::protobuf::Message& response) {
  // The common case is one statement. A conflicting claim by a transaction still running makes
  // this INSERT wait for it; DO NOTHING then means that transaction committed.
  const pqxx::result claimed =
      ExecPrepared(tx, "peerpath_idempotency_claim", kClaimIdempotencyKeySql, call.agency_id,
                   call.key, call.method, RequestFingerprintHex(call));
  if (!claimed.empty()) return false;
  if (absl::Status replayed = ReplayClaimedKey(tx, call, response); !replayed.ok()) {
    return replayed;
  }
  return true;
}

absl::Status ReplayClaimedKey(pqxx::work& tx, const IdempotentCall& call,
                              google::protobuf::Message& response) {
  const absl::StatusOr<bool> replayed = ReplayIfRecorded(tx, call, response);
  if (!replayed.ok()) return replayed.status();
  if (!*replayed) {
    // Deleted between the two statements: only the 24-hour clean-up does that.
    return absl::AbortedError("idempotency key changed concurrently; retry the call");
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> ReplayIfRecorded(pqxx::work& tx, const IdempotentCall& call,
                                      google::protobuf::Message& response) {
  const pqxx::result first = tx.exec_params(
      "SELECT method, encode(request_hash, 'hex'), encode(response, 'base64') "
      "FROM idempotency_keys WHERE agency_id = $1 AND idempotency_key = $2",
      call.agency_id, call.key);
  if (first.empty()) return false;
  const StoredIdempotentCall stored{first[0][0].as<std::string>(), first[0][1].as<std::string>(),
                                    first[0][2].as<std::string>()};
  if (absl::Status replayed = ReplayStoredCall(call, stored, response); !replayed.ok()) {
    return replayed;
  }
  return true;
}

namespace {

template <typename Writes>
void StoreResponse(Writes& writes, const IdempotentCall& call,
                   const google::protobuf::Message& response) {
  // Binary when the statement runs at once (a batch's response is megabytes), a bytea literal
  // when deferred. One statement per key, even in a group commit: each key is an index condition
  // whatever the statistics say (one statement for many keys, = ANY or a join over an unnest of
  // them, was planned on statistics that lagged behind the table's growth as a read of all of the
  // agency's keys).
  writes.Exec("peerpath_idempotency_store_bytes",
              "UPDATE idempotency_keys SET response = $3::bytea "
              "WHERE agency_id = $1 AND idempotency_key = $2",
              call.agency_id, call.key, pqxx::binarystring(DeterministicBytes(response)));
}

}  // namespace

absl::Status StoreIdempotentResponse(pqxx::work& tx, const IdempotentCall& call,
                                     const google::protobuf::Message& response) {
  ImmediateWrites writes{tx};
  StoreResponse(writes, call, response);
  return absl::OkStatus();
}

void StoreIdempotentResponse(DeferredWrites& writes, const IdempotentCall& call,
                             const google::protobuf::Message& response) {
  StoreResponse(writes, call, response);
}

void ReleaseIdempotencyKey(DeferredWrites& writes, const IdempotentCall& call) {
  writes.Exec("peerpath_idempotency_release",
              "DELETE FROM idempotency_keys WHERE agency_id = $1 AND idempotency_key = $2",
              call.agency_id, call.key);
}

absl::Status RunIdempotent(
    Database& db, const IdempotentCall& call, google::protobuf::Message& response,
    const std::function<absl::Status(pqxx::work&, google::protobuf::Message&)>& write) {
  if (absl::Status valid = ValidateIdempotencyKey(call.key); !valid.ok()) return valid;
  return db.TransactForAgency(call.agency_id, [&](pqxx::work& tx) -> absl::Status {
    auto claim = ClaimIdempotencyKey(tx, call, response);
    if (!claim.ok()) return claim.status();
    if (*claim) return absl::OkStatus();  // Replayed: the transaction only read.
    response.Clear();
    if (absl::Status written = write(tx, response); !written.ok()) return written;
    return StoreIdempotentResponse(tx, call, response);
  });
}

absl::StatusOr<int64_t> DeleteExpiredIdempotencyKeys(Database& db, absl::Duration keep) {
  keep = std::max(keep, absl::Hours(24));
  return db.TransactForMaintenance([&](pqxx::work& tx) -> absl::StatusOr<int64_t> {
    // The policy refuses anything younger than 24 hours whatever `keep` says.
    return static_cast<int64_t>(
        tx.exec_params0("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval("
                        "secs => $1)",
                        absl::ToDoubleSeconds(keep))
            .affected_rows());
  });
}

}  // namespace peerpath
