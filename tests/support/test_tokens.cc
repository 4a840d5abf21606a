#include "tests/support/test_tokens.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>

#include "absl/time/clock.h"
#include "common/auth.h"
#include "gtest/gtest.h"

namespace peerpath::testing {
namespace {

std::string Pem(EVP_PKEY* key, bool private_key) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  if (private_key) {
    PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  } else {
    PEM_write_bio_PUBKEY(bio.get(), key);
  }
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

// Writes `content` to a new file named `prefix` and six random characters in the test's temporary
// folder, readable by its owner only (mkstemp); returns its path.
std::string WriteOwnFile(const std::string& prefix, const std::string& content) {
  std::string path = ::testing::TempDir() + prefix + "XXXXXX";
  const int fd = mkstemp(path.data());
  if (fd < 0) throw std::runtime_error("cannot create " + prefix + " in " + ::testing::TempDir());
  const bool written =
      write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  close(fd);
  if (!written) {
    unlink(path.c_str());
    throw std::runtime_error("cannot write " + path);
  }
  return path;
}

TestKeys MakeKeys() {
  TestKeys keys;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> ec(EVP_EC_gen("P-256"), EVP_PKEY_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> rsa(EVP_RSA_gen(2048), EVP_PKEY_free);
  if (ec == nullptr || rsa == nullptr) throw std::runtime_error("key generation failed");
  keys.ec_private_pem = Pem(ec.get(), true);
  keys.rsa_private_pem = Pem(rsa.get(), true);
  const std::string path =
      WriteOwnFile("peerpath-test-keys-", Pem(ec.get(), false) + Pem(rsa.get(), false));
  keys.public_keys_file = path;
  // Removed when the test process ends.
  static const std::string to_remove = path;
  std::atexit([] { unlink(to_remove.c_str()); });
  return keys;
}

}  // namespace

const TestKeys& Keys() {
  static const TestKeys* const keys = new TestKeys(MakeKeys());
  return *keys;
}

std::vector<std::string> TokenFlags() {
  return {"--jwt_keys_file=" + Keys().public_keys_file, std::string("--jwt_issuer=") + kTestIssuer,
          std::string("--jwt_audience=") + kTestAudience};
}

std::string TokenFor(const std::string& agency, const std::vector<std::string>& roles,
                     const std::string& subject) {
  const absl::Time now = absl::Now();
  auto token =
      MintToken(Keys().ec_private_pem, "test-ec",
                {kTestIssuer, kTestAudience, subject, agency, roles, now, now + absl::Hours(1)});
  if (!token.ok()) throw std::runtime_error(std::string(token.status().message()));
  return *token;
}

TokenFile::TokenFile(const std::string& agency, const std::vector<std::string>& roles,
                     const std::string& subject)
    : path_(WriteOwnFile("peerpath-service-token-", TokenFor(agency, roles, subject))) {}

TokenFile::~TokenFile() { unlink(path_.c_str()); }

std::string TokenFile::Flag() const { return "--service_token_file=" + path_; }

std::string UntrustedPrivateKey() {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> ec(EVP_EC_gen("P-256"), EVP_PKEY_free);
  return Pem(ec.get(), true);
}

}  // namespace peerpath::testing
