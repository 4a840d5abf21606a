#pragma once

// Idempotent create/record RPCs (DESIGN.md section 3): the call claims (agency, idempotency_key)
// with INSERT ... ON CONFLICT in the same transaction as its write and stores its response there.
//
//   - First call: the key is claimed, the write runs, the response is stored; all commit together.
//   - Retry with the same key and the same request: the stored response is returned; nothing is
//     written.
//   - Same key, different request (or another RPC): FAILED_PRECONDITION.
//   - Two concurrent calls with one key: PostgreSQL makes the second INSERT wait for the first
//     transaction; when it commits, the second returns its response; when it rolls back, the
//     second runs as the first.
//
// Keys are kept at least 24 hours (the clean-up deletes only older ones).

#include <google/protobuf/message.h>

#include <functional>
#include <pqxx/pqxx>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/db.h"

namespace peerpath {

// INVALID_ARGUMENT naming `field` unless `key` is 1-128 characters of [A-Za-z0-9_.:-].
absl::Status ValidateIdempotencyKey(absl::string_view key,
                                    absl::string_view field = "idempotency_key");

// `message` serialised deterministically (map entries in key order): equal messages, equal bytes.
std::string DeterministicBytes(const google::protobuf::Message& message);

// SHA-256 (raw bytes) of the caller and the request's deterministic serialisation.
std::string RequestFingerprint(const google::protobuf::Message& request,
                               const std::string& caller = "");

struct IdempotentCall {
  std::string agency_id;
  std::string key;
  std::string method;  // The RPC's name, e.g. "RecordCheckIn".
  const google::protobuf::Message* request = nullptr;
  // The caller's subject: a stored response is replayed only to the caller who made the first
  // call (another caller reusing the key, even with the same request, is FAILED_PRECONDITION).
  std::string caller;
};

// Runs `write(tx, response)` once per (agency, key) in one transaction with the key claim and the
// stored response. On a retry, fills `response` from the first call and returns OK without
// running `write`. `write` failing rolls everything back (the key stays free).
absl::Status RunIdempotent(
    Database& db, const IdempotentCall& call, google::protobuf::Message& response,
    const std::function<absl::Status(pqxx::work&, google::protobuf::Message&)>& write);

// The same inside a transaction the caller runs (scoped to call.agency_id). Returns true when
// `response` was replayed from a previous call (the caller must then write nothing and should
// roll back), false when the key is now claimed and the caller must write, then call
// StoreIdempotentResponse before committing.
absl::StatusOr<bool> ClaimIdempotencyKey(pqxx::work& tx, const IdempotentCall& call,
                                         google::protobuf::Message& response);

// The second half of ClaimIdempotencyKey, for write paths that claim the key in a statement of
// their own (INSERT ... ON CONFLICT DO NOTHING inserted nothing): fills `response` from the call
// that claimed it, or refuses as ClaimIdempotencyKey does.
absl::Status ReplayClaimedKey(pqxx::work& tx, const IdempotentCall& call,
                              google::protobuf::Message& response);
// Without claiming: true with `response` filled when a committed call used the key (or
// FAILED_PRECONDITION as ClaimIdempotencyKey refuses), false when no call did. For requests that
// time has made invalid since their first call (a period now past): a retry still gets its
// first answer.
absl::StatusOr<bool> ReplayIfRecorded(pqxx::work& tx, const IdempotentCall& call,
                                      google::protobuf::Message& response);
absl::Status StoreIdempotentResponse(pqxx::work& tx, const IdempotentCall& call,
                                     const google::protobuf::Message& response);
// The same, sent with the caller's other deferred writes (DeferredWrites::Flush).
void StoreIdempotentResponse(DeferredWrites& writes, const IdempotentCall& call,
                             const google::protobuf::Message& response);
// Gives back a key the caller's transaction claimed for a call that writes nothing after all (a
// call refused in a transaction that commits others' writes): the key stays free, as if never
// claimed. Sent with the caller's other deferred writes.
void ReleaseIdempotencyKey(DeferredWrites& writes, const IdempotentCall& call);

// An earlier claim of a key as stored in idempotency_keys, for write paths that read it in their
// own statement (RecordCheckIn) rather than through ClaimIdempotencyKey.
struct StoredIdempotentCall {
  std::string method;
  std::string request_hash_hex;  // encode(request_hash, 'hex')
  std::string response_base64;   // encode(response, 'base64'): line breaks allowed
};

// The request fingerprint of `call` as stored: lowercase hex of RequestFingerprint.
std::string RequestFingerprintHex(const IdempotentCall& call);

// Fills `response` from `stored` when `call` retries the call that stored it; FAILED_PRECONDITION
// when the key was used by another RPC, with another request or by another caller.
absl::Status ReplayStoredCall(const IdempotentCall& call, const StoredIdempotentCall& stored,
                              google::protobuf::Message& response);

// Deletes keys of every agency older than `keep` (never less than 24 hours). Returns how many.
absl::StatusOr<int64_t> DeleteExpiredIdempotencyKeys(Database& db, absl::Duration keep);

}  // namespace peerpath
