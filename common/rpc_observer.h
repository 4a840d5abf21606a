#pragma once

// Observes every RPC a server handles: Prometheus RED metrics with the conventional names of
// go-grpc-prometheus, a request id, and one structured log line per finished call.
//
//   grpc_server_started_total{grpc_service,grpc_method,grpc_type}
//   grpc_server_handled_total{grpc_service,grpc_method,grpc_type,grpc_code}
//   grpc_server_handling_seconds{grpc_service,grpc_method,grpc_type}   (histogram)
//
// Labels are bounded sets (the service's methods and the 17 codes). The request id comes from the
// client's `x-request-id` metadata when it is a sane token, else it is generated; it is visible to
// handlers through the call's client metadata and returned in the response's initial metadata.

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_interceptor.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

namespace peerpath {

inline constexpr char kRequestIdHeader[] = "x-request-id";

// The request id of the current call (set by the observer), or "" outside an observed server.
std::string RequestId(const grpc::ServerContextBase& context);

class RpcObserverFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcObserverFactory(prometheus::Registry& registry);

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

  prometheus::Family<prometheus::Counter>& started() { return started_; }
  prometheus::Family<prometheus::Counter>& handled() { return handled_; }
  prometheus::Family<prometheus::Histogram>& handling_seconds() { return handling_seconds_; }

 private:
  prometheus::Family<prometheus::Counter>& started_;
  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Histogram>& handling_seconds_;
};

}  // namespace peerpath
