#pragma once

#include "common/authorization.h"
#include "common/server.h"
#include "peerpath/evaluation/v1/evaluation.grpc.pb.h"

namespace peerpath::evaluation {

// peerpath.evaluation.v1.EvaluationService. A consumer of the other services' event logs: it
// serves no event log of its own. The domain RPCs answer UNIMPLEMENTED until the evaluation issue
// builds them.
class EvaluationService final : public v1::EvaluationService::Service {
 public:
  explicit EvaluationService(ServiceContext& context);

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

 private:
  Authorizer authorizer_;
};

}  // namespace peerpath::evaluation
