#include "services/checkin/consent_gates.h"

#include <grpcpp/client_context.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/channel.h"
#include "common/event_source.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"

namespace peerpath::checkin {
namespace {

class UnconfiguredConsentGates final : public ConsentGates {
 public:
  absl::StatusOr<std::vector<ConsentGateAnswer>> Check(
      const std::string&, const std::string&, const std::vector<std::string>& gates) override {
    std::vector<ConsentGateAnswer> answers;
    for (const auto& gate : gates) {
      answers.push_back({.gate = gate,
                         .held = false,
                         .reason = "consent cannot be confirmed: this check-in service has no "
                                   "consent service configured (--consent_address)",
                         .consent_ids = {}});
    }
    return answers;
  }
  absl::StatusOr<AccessAnswer> CheckAccess(const std::string&, const std::string&,
                                           const std::string&, const std::vector<std::string>&,
                                           consent::v1::DataCategory,
                                           consent::v1::Purpose) override {
    return AccessAnswer{.permitted = false,
                        .reason =
                            "consent cannot be confirmed: this check-in service has no "
                            "consent service configured (--consent_address)"};
  }
};

class GrpcConsentGates final : public ConsentGates {
 public:
  GrpcConsentGates(std::shared_ptr<grpc::Channel> channel, std::shared_ptr<ServiceToken> token)
      : stub_(consent::v1::ConsentService::NewStub(channel)), token_(std::move(token)) {}

  absl::StatusOr<std::vector<ConsentGateAnswer>> Check(
      const std::string& agency_id, const std::string& participant_id,
      const std::vector<std::string>& gates) override {
    if (gates.empty()) return std::vector<ConsentGateAnswer>{};
    auto bearer = token_->Get();
    if (!bearer.ok()) {
      return absl::UnavailableError("consent gates cannot be checked: no service token");
    }
    grpc::ClientContext context;
    Prepare(context, *bearer, agency_id);
    consent::v1::CheckGatesRequest request;
    request.set_participant_id(participant_id);
    for (const auto& gate : gates) request.add_gates(gate);
    consent::v1::CheckGatesResponse response;
    const grpc::Status status = stub_->CheckGates(&context, request, &response);
    if (!status.ok()) {
      // Whatever went wrong there, no gate is known to hold: the caller retries later.
      return absl::UnavailableError(absl::StrCat(
          "consent service could not check the gates (", static_cast<int>(status.error_code()),
          "); no consent gate is assumed to hold, retry with the same idempotency key"));
    }
    std::vector<ConsentGateAnswer> answers;
    for (const auto& gate : gates) {
      ConsentGateAnswer answer{.gate = gate,
                               .held = false,
                               .reason = "the consent service gave no answer for this gate",
                               .consent_ids = {}};
      for (const auto& result : response.results()) {
        if (result.gate() != gate) continue;
        answer.held = result.held();
        answer.reason = result.held() ? "" : result.message();
        if (!result.held() && answer.reason.empty()) answer.reason = "consent gate not held";
        answer.consent_ids.assign(result.consent_ids().begin(), result.consent_ids().end());
      }
      answers.push_back(std::move(answer));
    }
    return answers;
  }

  absl::StatusOr<AccessAnswer> CheckAccess(const std::string& agency_id,
                                           const std::string& participant_id,
                                           const std::string& subject,
                                           const std::vector<std::string>& roles,
                                           consent::v1::DataCategory category,
                                           consent::v1::Purpose purpose) override {
    auto bearer = token_->Get();
    if (!bearer.ok()) return absl::UnavailableError("consent cannot be asked: no service token");
    grpc::ClientContext context;
    Prepare(context, *bearer, agency_id);
    consent::v1::CheckAccessRequest request;
    request.set_participant_id(participant_id);
    request.mutable_actor()->set_subject(subject);
    for (const auto& role : roles) request.mutable_actor()->add_roles(role);
    request.set_data_category(category);
    request.set_purpose(purpose);
    consent::v1::CheckAccessResponse response;
    const grpc::Status status = stub_->CheckAccess(&context, request, &response);
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrCat("the consent service could not decide (",
                                                 static_cast<int>(status.error_code()),
                                                 "); nothing is shared, retry later"));
    }
    const bool permitted = response.decision() == consent::v1::ACCESS_DECISION_PERMIT;
    return AccessAnswer{.permitted = permitted, .reason = permitted ? "" : response.message()};
  }

 private:
  // Deadline, this service's token, and the agency the question is about (the service token's
  // own agency is the platform's).
  static void Prepare(grpc::ClientContext& context, const std::string& bearer,
                      const std::string& agency_id) {
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    context.AddMetadata("authorization", absl::StrCat("Bearer ", bearer));
    context.AddMetadata("x-peerpath-agency-id", agency_id);
  }

  std::unique_ptr<consent::v1::ConsentService::Stub> stub_;
  std::shared_ptr<ServiceToken> token_;
};

}  // namespace

std::unique_ptr<ConsentGates> MakeUnconfiguredConsentGates() {
  return std::make_unique<UnconfiguredConsentGates>();
}

absl::StatusOr<std::unique_ptr<ConsentGates>> MakeGrpcConsentGates(const std::string& address,
                                                                   const ServerConfig& config) {
  auto channel = MakeChannel(address, config.client_tls);
  if (!channel.ok()) return channel.status();
  return std::make_unique<GrpcConsentGates>(
      *channel, std::make_shared<ServiceToken>(config.service_token_file));
}

}  // namespace peerpath::checkin
