#pragma once

#include "common/db.h"
#include "peerpath/ops/v1/operations.grpc.pb.h"

namespace peerpath {

// peerpath.ops.v1.OperationsService, served by every binary.
class OperationsService final : public peerpath::ops::v1::OperationsService::Service {
 public:
  explicit OperationsService(Database& db) : db_(db) {}

  grpc::Status ListMigrations(grpc::ServerContext* context,
                              const peerpath::ops::v1::ListMigrationsRequest* request,
                              peerpath::ops::v1::ListMigrationsResponse* response) override;

 private:
  absl::Status ListMigrationsImpl(const peerpath::ops::v1::ListMigrationsRequest& request,
                                  peerpath::ops::v1::ListMigrationsResponse& response);

  Database& db_;
};

}  // namespace peerpath
