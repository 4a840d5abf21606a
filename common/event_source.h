#pragma once

// The consumer's view of a producer: an EventFetcher over the producer's ListEvents RPC, called
// with this service's own identity (a `service` role token read from a file, so a rotated token
// is picked up) and a deadline on every call.

#include <grpcpp/client_context.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/channel.h"
#include "common/event_consumer.h"
#include "common/event_log.h"
#include "common/log.h"
#include "common/server.h"

namespace peerpath {

// A bearer token kept in a file (a Kubernetes projected token, or one minted by
// `peerpathctl token --role=service` for local runs), re-read when the file changes.
class ServiceToken {
 public:
  explicit ServiceToken(std::string path) : path_(std::move(path)) {}

  absl::StatusOr<std::string> Get() {
    struct stat info {};
    if (stat(path_.c_str(), &info) != 0) {
      return absl::FailedPreconditionError(absl::StrCat("service token file ", path_, " missing"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (info.st_mtim.tv_sec != mtime_ || token_.empty()) {
      std::ifstream in(path_);
      std::stringstream text;
      text << in.rdbuf();
      token_ = std::string(absl::StripAsciiWhitespace(text.str()));
      mtime_ = info.st_mtim.tv_sec;
    }
    if (token_.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("service token file ", path_, " empty"));
    }
    return token_;
  }

 private:
  const std::string path_;
  std::mutex mu_;
  std::string token_;
  time_t mtime_ = 0;
};

// Fetches pages of a producer's log with its generated Stub (any PeerPath producing service: their
// ListEvents requests and responses have the same fields).
template <typename ListRequest, typename ListResponse, typename Stub>
EventFetcher ListEventsFetcher(std::shared_ptr<Stub> stub, std::shared_ptr<ServiceToken> token,
                               absl::Duration deadline = absl::Seconds(10)) {
  return [stub, token, deadline](int64_t after, int page_size) -> absl::StatusOr<EventPage> {
    auto bearer = token->Get();
    if (!bearer.ok()) return bearer.status();
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    context.AddMetadata("authorization", absl::StrCat("Bearer ", *bearer));
    ListRequest request;
    request.set_after_position(after);
    request.set_page_size(page_size);
    ListResponse response;
    grpc::Status status = stub->ListEvents(&context, request, &response);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          absl::StrCat("producer ListEvents: ", status.error_message()));
    }
    EventPage page;
    page.head_position = response.head_position();
    page.events.assign(response.events().begin(), response.events().end());
    return page;
  };
}

// The fetcher of the event log of `Service` (a generated producing service) at `address`, with
// this service's channel settings and token (--client_tls_*, --service_token_file). A channel
// that cannot be made (plaintext to a non-loopback address, unreadable certificates) is a
// configuration error: logged under `source`, and the process exits with code 2 at start-up.
template <typename Service, typename ListRequest, typename ListResponse>
EventFetcher FetcherOf(ServiceContext& context, const std::string& address,
                       const std::string& source) {
  auto channel = MakeChannel(address, context.config.client_tls);
  if (!channel.ok()) {
    log::Error("bad configuration: cannot reach an event source",
               {{"source", source}, {"error", std::string(channel.status().message())}});
    std::exit(2);
  }
  std::shared_ptr<typename Service::Stub> stub = Service::NewStub(*channel);
  return ListEventsFetcher<ListRequest, ListResponse>(
      stub, std::make_shared<ServiceToken>(context.config.service_token_file));
}

// A consumer of that log (FetcherOf) applying each event with `apply`.
template <typename Service, typename ListRequest, typename ListResponse>
std::unique_ptr<EventConsumer> ConsumerOf(ServiceContext& context, const std::string& address,
                                          ConsumerOptions options, EventHandler apply) {
  EventFetcher fetch =
      FetcherOf<Service, ListRequest, ListResponse>(context, address, options.source);
  return std::make_unique<EventConsumer>(context.db, std::move(options), std::move(fetch),
                                         std::move(apply), &context.metrics);
}

}  // namespace peerpath
