#pragma once
// Consent gates of a pathway ("cannot proceed without documented consent ..."), asked of the
// consent service. Behind an interface so the handlers never know how the answer is obtained and
// tests can use a double; a consent gate is never assumed to hold.
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "peerpath/consent/v1/consent.pb.h"

namespace peerpath::checkin {

struct ConsentGateAnswer {
  std::string gate;  // The gate name as asked.
  bool held = false;
  std::string reason;  // Why it does not hold (for people; no personal data).
  std::vector<std::string> consent_ids;
};

// A consent decision for one staff member's access to a participant's data (CheckAccess).
struct AccessAnswer {
  bool permitted = false;
  std::string reason;  // Why not (for people; no personal data).
};

class ConsentGates {
 public:
  virtual ~ConsentGates() = default;
  // One answer per gate, in order. UNAVAILABLE when the consent service cannot be reached: the
  // caller must then refuse, never proceed.
  virtual absl::StatusOr<std::vector<ConsentGateAnswer>> Check(
      const std::string& agency_id, const std::string& participant_id,
      const std::vector<std::string>& gates) = 0;
  // Whether the consent service permits `subject` acting in `roles` to receive the participant's
  // data of `category` for `purpose`. UNAVAILABLE when it cannot be asked: the caller must then
  // refuse, never share.
  virtual absl::StatusOr<AccessAnswer> CheckAccess(const std::string& agency_id,
                                                   const std::string& participant_id,
                                                   const std::string& subject,
                                                   const std::vector<std::string>& roles,
                                                   consent::v1::DataCategory category,
                                                   consent::v1::Purpose purpose) = 0;
};

// Without a consent service (--consent_address unset): every consent gate is reported unmet and
// every access denied, with that reason.
std::unique_ptr<ConsentGates> MakeUnconfiguredConsentGates();

// ConsentService.CheckGates over gRPC at `address`, with this service's own token
// (config.service_token_file) and client TLS settings; a deadline on every call.
absl::StatusOr<std::unique_ptr<ConsentGates>> MakeGrpcConsentGates(const std::string& address,
                                                                   const ServerConfig& config);

}  // namespace peerpath::checkin
