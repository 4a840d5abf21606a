#pragma once

// Authentication: every domain RPC carries `authorization: Bearer <JWT>` from the agency's
// identity provider (or a service identity for service-to-service calls).
//
// Tokens are verified with cpp-jwt against public keys from a JWKS or PEM file. Only RS256 (RSA
// keys) and ES256 (P-256 keys) are accepted; `none` and HMAC algorithms never are. `exp` is
// required; `exp`, `nbf`, `iss` and `aud` are checked with a small leeway. A failure says which
// check failed, and nothing else of the call runs.

#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace grpc {
class ServerContextBase;
}

namespace peerpath {

enum class Role {
  kPeerSupporter,
  kSupervisor,
  kClinician,
  kCaseManager,
  kProgramAdmin,
  kIntegration,
  kOperations,
  kService,
};

// "peer_supporter", "supervisor", ... as in tokens.
const char* RoleName(Role role);
std::optional<Role> ParseRole(absl::string_view name);

// Who is calling: taken only from a verified token.
struct Identity {
  std::string subject;    // `sub`: the staff member's (or system's) id.
  std::string agency_id;  // `agency_id` claim: the tenant; every object access is scoped to it.
  std::set<Role> roles;   // `roles` claim; names PeerPath does not know are ignored.

  bool Has(Role role) const { return roles.contains(role); }
};

struct VerifierOptions {
  std::string issuer;    // Required `iss`.
  std::string audience;  // Required in `aud` (a string or an array).
  absl::Duration leeway = absl::Seconds(30);
};

class TokenVerifier {
 public:
  // Reads public keys from `path`: a JWKS document ({"keys": [...]}, RSA and EC P-256 keys) or
  // one or more PEM public keys / certificates.
  static absl::StatusOr<std::unique_ptr<TokenVerifier>> FromFile(const std::string& path,
                                                                 VerifierOptions options);
  static absl::StatusOr<std::unique_ptr<TokenVerifier>> FromText(absl::string_view text,
                                                                 VerifierOptions options);

  // UNAUTHENTICATED with the reason (malformed, expired, not yet valid, wrong issuer, wrong
  // audience, bad signature / unknown key, missing claim) unless the token verifies.
  absl::StatusOr<Identity> Verify(absl::string_view token) const;

  // Reads the bearer token from the call's `authorization` metadata and verifies it.
  absl::StatusOr<Identity> Authenticate(const grpc::ServerContextBase& context) const;

  size_t key_count() const { return keys_.size(); }

 private:
  struct Key {
    std::string algorithm;  // "RS256" or "ES256".
    std::string pem;        // SubjectPublicKeyInfo PEM.
  };
  TokenVerifier(std::vector<Key> keys, VerifierOptions options)
      : keys_(std::move(keys)), options_(std::move(options)) {}

  absl::StatusOr<Identity> VerifyUncached(absl::string_view token, absl::Time* expires) const;

  std::vector<Key> keys_;
  VerifierOptions options_;

  // Tokens already verified, until they expire: a signature check costs far more than a call
  // (clients send the same token on every call). Bounded; cleared when full.
  struct Verified {
    Identity identity;
    absl::Time expires;
  };
  static constexpr size_t kMaxCachedTokens = 10000;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, Verified> cache_;
};

// Claims of a token minted by MintToken.
struct TokenClaims {
  std::string issuer;
  std::string audience;
  std::string subject;
  std::string agency_id;
  std::vector<std::string> roles;
  absl::Time issued_at;
  absl::Time expires_at;
};

// Signs a token with a PEM private key (RSA → RS256, P-256 → ES256). For development tokens
// (`peerpathctl token`) and tests; production tokens come from the agency's identity provider.
absl::StatusOr<std::string> MintToken(absl::string_view private_key_pem, absl::string_view key_id,
                                      const TokenClaims& claims);

// The issuer of development tokens. Services refuse to trust it unless --allow_dev_tokens is set.
inline constexpr char kDevTokenIssuer[] = "peerpath-dev";

}  // namespace peerpath
