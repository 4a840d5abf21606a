#pragma once

#include "common/authorization.h"
#include "common/db.h"
#include "peerpath/ops/v1/operations.grpc.pb.h"

namespace peerpath {

// peerpath.ops.v1.OperationsService, served by every binary. Callers need the operations,
// program_admin or service role; the answers hold no personal data.
class OperationsService final : public peerpath::ops::v1::OperationsService::Service {
 public:
  OperationsService(Database& db, const TokenVerifier& verifier);

  grpc::Status ListMigrations(grpc::ServerContext* context,
                              const peerpath::ops::v1::ListMigrationsRequest* request,
                              peerpath::ops::v1::ListMigrationsResponse* response) override;

 private:
  absl::Status ListMigrationsImpl(const peerpath::ops::v1::ListMigrationsRequest& request,
                                  peerpath::ops::v1::ListMigrationsResponse& response);

  Database& db_;
  Authorizer authorizer_;
};

}  // namespace peerpath
