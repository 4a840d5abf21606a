#include "common/rpc_observer.h"

#include <chrono>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "common/log.h"
#include "common/status.h"

namespace peerpath {
namespace {

using grpc::experimental::InterceptionHookPoints;
using grpc::experimental::ServerRpcInfo;

const char* TypeName(ServerRpcInfo::Type type) {
  switch (type) {
    case ServerRpcInfo::Type::UNARY:
      return "unary";
    case ServerRpcInfo::Type::CLIENT_STREAMING:
      return "client_stream";
    case ServerRpcInfo::Type::SERVER_STREAMING:
      return "server_stream";
    case ServerRpcInfo::Type::BIDI_STREAMING:
      return "bidi_stream";
    default:
      return "unknown";
  }
}

// A client-supplied id is echoed only if it is short and made of safe characters, so it cannot
// smuggle personal data or log-injection into our logs.
bool IsSaneRequestId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

std::string NewRequestId() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const uint64_t a = rng(), b = rng();
  std::string bytes(reinterpret_cast<const char*>(&a), sizeof a);
  bytes.append(reinterpret_cast<const char*>(&b), sizeof b);
  return absl::BytesToHexString(bytes);
}

class RpcObserver : public grpc::experimental::Interceptor {
 public:
  RpcObserver(RpcObserverFactory& factory, ServerRpcInfo* info)
      : factory_(factory), start_(std::chrono::steady_clock::now()) {
    // info->method() is "/package.Service/Method".
    std::string_view full = info->method() != nullptr ? info->method() : "/unknown/unknown";
    if (!full.empty() && full.front() == '/') full.remove_prefix(1);
    const auto slash = full.find('/');
    service_ = std::string(full.substr(0, slash));
    method_ = slash == std::string_view::npos ? "unknown" : std::string(full.substr(slash + 1));
    type_ = TypeName(info->type());
    factory_.started()
        .Add({{"grpc_service", service_}, {"grpc_method", method_}, {"grpc_type", type_}})
        .Increment();
  }

  ~RpcObserver() override {
    // A call torn down without sending a status (client went away) counts as CANCELLED.
    if (!finished_) Finish(grpc::StatusCode::CANCELLED);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      auto* metadata = methods->GetRecvInitialMetadata();
      auto it = metadata->find(kRequestIdHeader);
      if (it != metadata->end() && IsSaneRequestId({it->second.data(), it->second.size()})) {
        request_id_.assign(it->second.data(), it->second.size());
      } else {
        if (it != metadata->end()) metadata->erase(it);
        request_id_ = NewRequestId();
        // The multimap holds references: they point into this observer, which outlives the call.
        metadata->emplace(grpc::string_ref(kRequestIdHeader), grpc::string_ref(request_id_));
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      if (!request_id_.empty()) {
        methods->GetSendInitialMetadata()->emplace(kRequestIdHeader, request_id_);
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      Finish(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  void Finish(grpc::StatusCode code) {
    finished_ = true;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const char* code_name = GrpcCodeName(code);
    factory_.handled()
        .Add({{"grpc_service", service_},
              {"grpc_method", method_},
              {"grpc_type", type_},
              {"grpc_code", code_name}})
        .Increment();
    static const auto* const kBuckets = new prometheus::Histogram::BucketBoundaries{
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    factory_.handling_seconds()
        .Add({{"grpc_service", service_}, {"grpc_method", method_}, {"grpc_type", type_}},
             *kBuckets)
        .Observe(seconds);
    const bool server_fault = code == grpc::StatusCode::INTERNAL ||
                              code == grpc::StatusCode::UNKNOWN ||
                              code == grpc::StatusCode::DATA_LOSS;
    const log::Level level = server_fault                   ? log::Level::kError
                             : code == grpc::StatusCode::OK ? log::Level::kDebug
                                                            : log::Level::kInfo;
    if (!log::Enabled(level)) return;
    log::Write(level, "rpc finished",
               {{"grpc_service", service_},
                {"grpc_method", method_},
                {"grpc_code", code_name},
                {"duration_ms", seconds * 1000.0},
                {"request_id", request_id_}});
  }

  RpcObserverFactory& factory_;
  const std::chrono::steady_clock::time_point start_;
  std::string service_;
  std::string method_;
  const char* type_;
  std::string request_id_;
  bool finished_ = false;
};

}  // namespace

std::string RequestId(const grpc::ServerContextBase& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kRequestIdHeader);
  if (it == metadata.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

RpcObserverFactory::RpcObserverFactory(prometheus::Registry& registry)
    : started_(prometheus::BuildCounter()
                   .Name("grpc_server_started_total")
                   .Help("Total number of RPCs started on the server.")
                   .Register(registry)),
      handled_(prometheus::BuildCounter()
                   .Name("grpc_server_handled_total")
                   .Help("Total number of RPCs completed on the server, regardless of success.")
                   .Register(registry)),
      handling_seconds_(prometheus::BuildHistogram()
                            .Name("grpc_server_handling_seconds")
                            .Help("Histogram of response latency (seconds) of gRPC calls handled "
                                  "by the server.")
                            .Register(registry)) {}

grpc::experimental::Interceptor* RpcObserverFactory::CreateServerInterceptor(ServerRpcInfo* info) {
  return new RpcObserver(*this, info);
}

}  // namespace peerpath
