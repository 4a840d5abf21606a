#pragma once

// Signing keys and tokens for tests: a P-256 and an RSA key pair made once per test process
// (never committed), the public halves in a PEM file the services under test trust.

#include <string>
#include <vector>

namespace peerpath::testing {

inline constexpr char kTestIssuer[] = "peerpath-test";
inline constexpr char kTestAudience[] = "peerpath";

struct TestKeys {
  std::string ec_private_pem;
  std::string rsa_private_pem;
  std::string public_keys_file;  // Both public keys, PEM.
};

const TestKeys& Keys();

// The flags a service under test needs to trust Keys().
std::vector<std::string> TokenFlags();

// A valid ES256 token for `agency` with `roles`, expiring in an hour.
std::string TokenFor(const std::string& agency, const std::vector<std::string>& roles,
                     const std::string& subject = "staff-1");

// A service's --service_token_file for the life of this object: TokenFor(agency, roles, subject)
// in a file of its own under the test's temporary folder, readable by its owner only (as a
// deployment's mounted token is), and removed again when the object goes.
class TokenFile {
 public:
  TokenFile(const std::string& agency, const std::vector<std::string>& roles,
            const std::string& subject);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const std::string& path() const { return path_; }
  // "--service_token_file=<path>".
  std::string Flag() const;

 private:
  std::string path_;
};

// A freshly generated key pair no service trusts (PEM private key).
std::string UntrustedPrivateKey();

}  // namespace peerpath::testing
