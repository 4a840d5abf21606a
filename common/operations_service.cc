#include "common/operations_service.h"

#include <limits>

#include "absl/strings/numbers.h"
#include "common/migrations.h"
#include "common/pagination.h"
#include "common/status.h"
#include "common/time_util.h"

namespace peerpath {

using peerpath::ops::v1::ListMigrationsRequest;
using peerpath::ops::v1::ListMigrationsResponse;

OperationsService::OperationsService(Database& db, const TokenVerifier& verifier)
    : db_(db),
      authorizer_(verifier, "peerpath.ops.v1.OperationsService",
                  {{"ListMigrations", {Role::kOperations, Role::kProgramAdmin, Role::kService}}}) {}

grpc::Status OperationsService::ListMigrations(grpc::ServerContext* context,
                                               const ListMigrationsRequest* request,
                                               ListMigrationsResponse* response) {
  absl::StatusOr<Identity> caller = authorizer_.Authorize(*context, "ListMigrations");
  if (!caller.ok()) return ToGrpc(caller.status());
  return ToGrpc(ListMigrationsImpl(*request, *response));
}

absl::Status OperationsService::ListMigrationsImpl(const ListMigrationsRequest& request,
                                                   ListMigrationsResponse& response) {
  constexpr char kList[] = "ops.migrations";
  std::vector<FieldViolation> violations;
  absl::StatusOr<int> page_size = ResolvePageSize(request.page_size());
  if (!page_size.ok()) {
    for (auto& v : FieldViolations(page_size.status())) violations.push_back(v);
  }
  int64_t after_sequence = 0;
  absl::StatusOr<std::string> cursor = DecodePageToken(kList, request.page_token());
  if (!cursor.ok()) {
    for (auto& v : FieldViolations(cursor.status())) violations.push_back(v);
  } else if (!cursor->empty() && !absl::SimpleAtoi(*cursor, &after_sequence)) {
    violations.push_back({"page_token", "token is damaged"});
  }
  if (!violations.empty()) return InvalidArgument("invalid ListMigrations request", violations);

  // One row more than the page tells whether another page exists.
  auto rows = db_.Transact(
      [&](pqxx::work& tx) { return ListAppliedMigrations(tx, after_sequence, *page_size + 1); });
  if (!rows.ok()) return rows.status();
  const bool more = static_cast<int>(rows->size()) > *page_size;
  if (more) rows->pop_back();
  for (const AppliedMigration& m : *rows) {
    auto* out = response.add_migrations();
    out->set_track(m.track);
    out->set_version(m.version);
    out->set_name(m.name);
    out->set_checksum(m.checksum);
    *out->mutable_applied_at() = ToProtoTimestamp(m.applied_at);
  }
  if (more) {
    response.set_next_page_token(EncodePageToken(kList, std::to_string(rows->back().sequence)));
  }
  return absl::OkStatus();
}

}  // namespace peerpath
