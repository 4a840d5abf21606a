// Token verification and authorization rules, without a server.
#include "common/auth.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "common/authorization.h"
#include "peerpath/ops/v1/operations.pb.h"
#include "tests/support/test_tokens.h"

namespace peerpath {
namespace {

using testing::Keys;
using testing::kTestAudience;
using testing::kTestIssuer;

std::unique_ptr<TokenVerifier> Verifier() {
  auto v = TokenVerifier::FromFile(Keys().public_keys_file, {kTestIssuer, kTestAudience});
  EXPECT_TRUE(v.ok()) << v.status();
  return std::move(*v);
}

TokenClaims Claims() {
  const absl::Time now = absl::Now();
  return {kTestIssuer, kTestAudience,         "staff-7", "agency-a", {"clinician", "astronaut"},
          now,         now + absl::Minutes(5)};
}

std::string Mint(const TokenClaims& claims, const std::string& pem = Keys().ec_private_pem) {
  auto token = MintToken(pem, "k1", claims);
  EXPECT_TRUE(token.ok()) << token.status();
  return *token;
}

void ExpectRefused(const absl::StatusOr<Identity>& result, const std::string& reason) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(result.status().message(), reason)) << result.status().message();
}

TEST(TokenVerifier, AcceptsEs256AndRs256AndReadsTheIdentity) {
  auto verifier = Verifier();
  EXPECT_EQ(verifier->key_count(), 2u);
  for (const std::string* pem : {&Keys().ec_private_pem, &Keys().rsa_private_pem}) {
    auto identity = verifier->Verify(Mint(Claims(), *pem));
    ASSERT_TRUE(identity.ok()) << identity.status();
    EXPECT_EQ(identity->subject, "staff-7");
    EXPECT_EQ(identity->agency_id, "agency-a");
    // Unknown role names are ignored, known ones kept.
    EXPECT_EQ(identity->roles, std::set<Role>{Role::kClinician});
  }
}

TEST(TokenVerifier, AVerifiedTokenIsRememberedOnlyUntilItExpires) {
  auto verifier = TokenVerifier::FromFile(Keys().public_keys_file,
                                          {kTestIssuer, kTestAudience, absl::ZeroDuration()});
  ASSERT_TRUE(verifier.ok());
  TokenClaims claims = Claims();
  claims.expires_at = absl::Now() + absl::Seconds(2);
  const std::string token = Mint(claims);
  ASSERT_TRUE((*verifier)->Verify(token).ok());
  ASSERT_TRUE((*verifier)->Verify(token).ok());  // From the cache.
  absl::SleepFor(absl::Seconds(3));
  ExpectRefused((*verifier)->Verify(token), "expired");
  ExpectRefused((*verifier)->Verify(token), "expired");
  // A remembered token with a changed signature is a different token, checked in full.
  std::string good = Mint(Claims());
  ASSERT_TRUE((*verifier)->Verify(good).ok());
  char& c = good[good.rfind('.') + 5];
  c = c == 'A' ? 'B' : 'A';
  ExpectRefused((*verifier)->Verify(good), "");
}

TEST(TokenVerifier, RefusesExpiredToken) {
  TokenClaims claims = Claims();
  claims.issued_at = absl::Now() - absl::Hours(2);
  claims.expires_at = absl::Now() - absl::Hours(1);
  ExpectRefused(Verifier()->Verify(Mint(claims)), "expired");
}

TEST(TokenVerifier, RefusesTokenNotYetValid) {
  TokenClaims claims = Claims();
  claims.issued_at = absl::Now() + absl::Hours(1);
  claims.expires_at = absl::Now() + absl::Hours(2);
  ExpectRefused(Verifier()->Verify(Mint(claims)), "not yet valid");
}

TEST(TokenVerifier, RefusesWrongIssuerAndAudience) {
  TokenClaims claims = Claims();
  claims.issuer = "someone-else";
  ExpectRefused(Verifier()->Verify(Mint(claims)), "wrong issuer");
  claims = Claims();
  claims.audience = "another-api";
  ExpectRefused(Verifier()->Verify(Mint(claims)), "wrong audience");
}

TEST(TokenVerifier, RefusesTokenSignedByAnUntrustedKey) {
  ExpectRefused(Verifier()->Verify(Mint(Claims(), testing::UntrustedPrivateKey())),
                "signature does not verify");
}

TEST(TokenVerifier, RefusesTamperedPayload) {
  std::string token = Mint(Claims());
  const auto first = token.find('.');
  const auto second = token.find('.', first + 1);
  std::string payload;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(token.substr(first + 1, second - first - 1), &payload));
  payload.replace(payload.find("agency-a"), 8, "agency-b");
  std::string forged =
      token.substr(0, first + 1) + absl::WebSafeBase64Escape(payload) + token.substr(second);
  ExpectRefused(Verifier()->Verify(forged), "signature");
}

TEST(TokenVerifier, RefusesNoneAndHmacAlgorithms) {
  const std::string payload = absl::WebSafeBase64Escape(
      R"({"iss":"peerpath-test","aud":"peerpath","sub":"x","agency_id":"a","exp":9999999999})");
  ExpectRefused(
      Verifier()->Verify(absl::WebSafeBase64Escape(R"({"alg":"none"})") + "." + payload + ".sig"),
      "algorithm NONE is not accepted");
  ExpectRefused(
      Verifier()->Verify(absl::WebSafeBase64Escape(R"({"alg":"HS256"})") + "." + payload + ".sig"),
      "algorithm HS256 is not accepted");
}

TEST(TokenVerifier, RefusesMalformedTokens) {
  ExpectRefused(Verifier()->Verify(""), "malformed");
  ExpectRefused(Verifier()->Verify("abc"), "malformed");
  ExpectRefused(Verifier()->Verify("a.b."), "malformed");
  ExpectRefused(Verifier()->Verify("!!!.???.###"), "malformed");
}

TEST(TokenVerifier, RefusesTokenWithoutAgency) {
  TokenClaims claims = Claims();
  claims.agency_id = "";
  ExpectRefused(Verifier()->Verify(Mint(claims)), "agency_id");
}

// The key parameter `name` as a JWK writes it: big-endian, in `width` bytes (EC coordinates are
// always the curve's size, RFC 7518 6.2.1.2), or in as few as it needs when `width` is 0 (RSA).
std::string Base64UrlParam(EVP_PKEY* key, const char* name, int width = 0) {
  BIGNUM* bn = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, name, &bn), 1);
  std::string bytes(width > 0 ? width : BN_num_bytes(bn), '\0');
  EXPECT_EQ(BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(bytes.data()),
                         static_cast<int>(bytes.size())),
            static_cast<int>(bytes.size()));
  BN_free(bn);
  return absl::WebSafeBase64Escape(bytes);
}

TEST(TokenVerifier, ReadsJwksWithRsaAndEcKeys) {
  auto load = [](const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    return key;
  };
  EVP_PKEY* rsa = load(Keys().rsa_private_pem);
  EVP_PKEY* ec = load(Keys().ec_private_pem);
  const std::string jwks = R"({"keys":[{"kty":"RSA","kid":"r1","use":"sig","n":")" +
                           Base64UrlParam(rsa, OSSL_PKEY_PARAM_RSA_N) + R"(","e":")" +
                           Base64UrlParam(rsa, OSSL_PKEY_PARAM_RSA_E) +
                           R"("},{"kty":"EC","kid":"e1","crv":"P-256","x":")" +
                           Base64UrlParam(ec, OSSL_PKEY_PARAM_EC_PUB_X, 32) + R"(","y":")" +
                           Base64UrlParam(ec, OSSL_PKEY_PARAM_EC_PUB_Y, 32) + R"("}]})";
  EVP_PKEY_free(rsa);
  EVP_PKEY_free(ec);
  auto verifier = TokenVerifier::FromText(jwks, {kTestIssuer, kTestAudience});
  ASSERT_TRUE(verifier.ok()) << verifier.status();
  EXPECT_EQ((*verifier)->key_count(), 2u);
  EXPECT_TRUE((*verifier)->Verify(Mint(Claims(), Keys().rsa_private_pem)).ok());
  EXPECT_TRUE((*verifier)->Verify(Mint(Claims(), Keys().ec_private_pem)).ok());
}

TEST(TokenVerifier, RefusesKeyFilesItCannotTrust) {
  EXPECT_FALSE(TokenVerifier::FromText(Keys().ec_private_pem, {kTestIssuer, kTestAudience}).ok());
  EXPECT_FALSE(TokenVerifier::FromText("", {kTestIssuer, kTestAudience}).ok());
  EXPECT_FALSE(TokenVerifier::FromText(R"({"keys":[{"kty":"oct","k":"c2VjcmV0"}]})",
                                       {kTestIssuer, kTestAudience})
                   .ok());
  EXPECT_FALSE(TokenVerifier::FromFile("/nonexistent/keys.pem", {kTestIssuer, kTestAudience}).ok());
}

TEST(Authorization, RuleTableMustCoverEveryMethod) {
  auto verifier = Verifier();
  const auto* service = peerpath::ops::v1::ListMigrationsRequest::descriptor()->file()->service(0);
  Authorizer incomplete(*verifier, "ops", {});
  auto status = incomplete.CheckCoversEveryMethod(*service);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "ListMigrations"));
  Authorizer complete(*verifier, "ops", {{"ListMigrations", {Role::kOperations}}});
  EXPECT_TRUE(complete.CheckCoversEveryMethod(*service).ok());
}

TEST(Authorization, OtherAgencyIsRefusedWithoutDetail) {
  Identity caller{"staff-1", "agency-a", {Role::kClinician}};
  EXPECT_TRUE(RequireSameAgency(caller, "agency-a").ok());
  auto refused = RequireSameAgency(caller, "agency-b");
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(absl::StrContains(refused.message(), "agency-b"));
  EXPECT_FALSE(RequireSameAgency(Identity{"s", "", {}}, "").ok());
}

}  // namespace
}  // namespace peerpath
