#include "common/auth.h"

#include <grpcpp/server_context.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <jwt/jwt.hpp>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace peerpath {
namespace {

constexpr struct {
  Role role;
  const char* name;
} kRoles[] = {
    {Role::kPeerSupporter, "peer_supporter"}, {Role::kSupervisor, "supervisor"},
    {Role::kClinician, "clinician"},          {Role::kCaseManager, "case_manager"},
    {Role::kProgramAdmin, "program_admin"},   {Role::kIntegration, "integration"},
    {Role::kOperations, "operations"},        {Role::kService, "service"},
};

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using BioPtr = std::unique_ptr<BIO, decltype(&BIO_free)>;

absl::Status Unauthenticated(absl::string_view why) {
  return absl::UnauthenticatedError(absl::StrCat("authentication failed: ", why));
}

std::string PublicKeyPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()), BIO_free);
  PEM_write_bio_PUBKEY(bio.get(), key);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

// "RS256" for RSA keys, "ES256" for P-256 EC keys, "" for anything else (refused).
std::string AlgorithmFor(EVP_PKEY* key) {
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA) return "RS256";
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC) {
    char group[64] = {0};
    size_t length = 0;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                       &length) == 1 &&
        std::string(group) == "prime256v1") {
      return "ES256";
    }
  }
  return "";
}

absl::StatusOr<std::string> Base64UrlField(const nlohmann::json& jwk, const char* field) {
  std::string raw;
  if (!jwk.contains(field) || !jwk[field].is_string() ||
      !absl::WebSafeBase64Unescape(jwk[field].get<std::string>(), &raw) || raw.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("JWK lacks a valid \"", field, "\""));
  }
  return raw;
}

absl::StatusOr<PkeyPtr> KeyFromJwk(const nlohmann::json& jwk) {
  const std::string kty = jwk.value("kty", "");
  OSSL_PARAM_BLD* build = OSSL_PARAM_BLD_new();
  std::unique_ptr<OSSL_PARAM_BLD, decltype(&OSSL_PARAM_BLD_free)> build_owner(build,
                                                                              OSSL_PARAM_BLD_free);
  std::unique_ptr<BIGNUM, decltype(&BN_free)> n(nullptr, BN_free), e(nullptr, BN_free);
  std::string point;
  const char* type = nullptr;
  if (kty == "RSA") {
    auto n_raw = Base64UrlField(jwk, "n");
    auto e_raw = Base64UrlField(jwk, "e");
    if (!n_raw.ok()) return n_raw.status();
    if (!e_raw.ok()) return e_raw.status();
    n.reset(BN_bin2bn(reinterpret_cast<const unsigned char*>(n_raw->data()),
                      static_cast<int>(n_raw->size()), nullptr));
    e.reset(BN_bin2bn(reinterpret_cast<const unsigned char*>(e_raw->data()),
                      static_cast<int>(e_raw->size()), nullptr));
    OSSL_PARAM_BLD_push_BN(build, OSSL_PKEY_PARAM_RSA_N, n.get());
    OSSL_PARAM_BLD_push_BN(build, OSSL_PKEY_PARAM_RSA_E, e.get());
    type = "RSA";
  } else if (kty == "EC") {
    if (jwk.value("crv", "") != "P-256") {
      return absl::InvalidArgumentError("only EC keys on curve P-256 (ES256) are accepted");
    }
    auto x = Base64UrlField(jwk, "x");
    auto y = Base64UrlField(jwk, "y");
    if (!x.ok()) return x.status();
    if (!y.ok()) return y.status();
    if (x->size() != 32 || y->size() != 32) {
      return absl::InvalidArgumentError("P-256 coordinates must be 32 bytes");
    }
    point = absl::StrCat(std::string(1, '\x04'), *x, *y);  // Uncompressed SEC1 point.
    OSSL_PARAM_BLD_push_utf8_string(build, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
    OSSL_PARAM_BLD_push_octet_string(build, OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size());
    type = "EC";
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unsupported JWK kty \"", kty, "\""));
  }
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(build);
  std::unique_ptr<OSSL_PARAM, decltype(&OSSL_PARAM_free)> params_owner(params, OSSL_PARAM_free);
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr), EVP_PKEY_CTX_free);
  EVP_PKEY* key = nullptr;
  if (ctx == nullptr || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params) != 1) {
    return absl::InvalidArgumentError("JWK does not describe a valid public key");
  }
  return PkeyPtr(key, EVP_PKEY_free);
}

absl::StatusOr<std::vector<PkeyPtr>> KeysFromPem(absl::string_view text) {
  std::vector<PkeyPtr> keys;
  BioPtr bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())), BIO_free);
  // Public keys and certificates, in any order.
  for (absl::string_view block : absl::StrSplit(text, "-----BEGIN ", absl::SkipEmpty())) {
    const std::string pem = absl::StrCat("-----BEGIN ", block);
    BioPtr one(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
    if (absl::StartsWith(block, "CERTIFICATE")) {
      std::unique_ptr<X509, decltype(&X509_free)> cert(
          PEM_read_bio_X509(one.get(), nullptr, nullptr, nullptr), X509_free);
      if (cert == nullptr) return absl::InvalidArgumentError("unreadable PEM certificate");
      keys.emplace_back(X509_get_pubkey(cert.get()), EVP_PKEY_free);
    } else if (absl::StartsWith(block, "PUBLIC KEY")) {
      EVP_PKEY* key = PEM_read_bio_PUBKEY(one.get(), nullptr, nullptr, nullptr);
      if (key == nullptr) return absl::InvalidArgumentError("unreadable PEM public key");
      keys.emplace_back(key, EVP_PKEY_free);
    } else if (absl::StrContains(block.substr(0, 40), "PRIVATE KEY")) {
      return absl::InvalidArgumentError(
          "the key file holds a private key; give the verifier only public keys");
    }
  }
  return keys;
}

std::string ClaimString(const nlohmann::json& payload, const char* name) {
  auto it = payload.find(name);
  return it != payload.end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

const char* RoleName(Role role) {
  for (const auto& r : kRoles) {
    if (r.role == role) return r.name;
  }
  return "unknown";
}

std::optional<Role> ParseRole(absl::string_view name) {
  for (const auto& r : kRoles) {
    if (name == r.name) return r.role;
  }
  return std::nullopt;
}

absl::StatusOr<std::unique_ptr<TokenVerifier>> TokenVerifier::FromFile(const std::string& path,
                                                                       VerifierOptions options) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read key file ", path));
  std::stringstream text;
  text << in.rdbuf();
  return FromText(text.str(), std::move(options));
}

absl::StatusOr<std::unique_ptr<TokenVerifier>> TokenVerifier::FromText(absl::string_view text,
                                                                       VerifierOptions options) {
  if (options.issuer.empty() || options.audience.empty()) {
    return absl::InvalidArgumentError("the token issuer and audience must be configured");
  }
  std::vector<PkeyPtr> pkeys;
  auto json = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (json.is_object() && json.contains("keys") && json["keys"].is_array()) {
    for (const auto& jwk : json["keys"]) {
      if (jwk.value("use", "sig") != "sig") continue;
      auto key = KeyFromJwk(jwk);
      if (!key.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("JWK \"", jwk.value("kid", "?"), "\": ", key.status().message()));
      }
      pkeys.push_back(std::move(*key));
    }
  } else {
    auto keys = KeysFromPem(text);
    if (!keys.ok()) return keys.status();
    pkeys = std::move(*keys);
  }
  std::vector<Key> keys;
  for (auto& pkey : pkeys) {
    const std::string algorithm = AlgorithmFor(pkey.get());
    if (algorithm.empty()) {
      return absl::InvalidArgumentError("only RSA and EC P-256 public keys are accepted");
    }
    keys.push_back({algorithm, PublicKeyPem(pkey.get())});
  }
  if (keys.empty()) return absl::InvalidArgumentError("the key file holds no public key");
  return std::unique_ptr<TokenVerifier>(new TokenVerifier(std::move(keys), std::move(options)));
}

absl::StatusOr<Identity> TokenVerifier::Verify(absl::string_view token) const {
  const absl::Time now = absl::Now();
  {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto hit = cache_.find(std::string(token));
    if (hit != cache_.end()) {
      if (now <= hit->second.expires + options_.leeway) return hit->second.identity;
      cache_.erase(hit);
      return Unauthenticated("token expired");
    }
  }
  absl::Time expires;
  absl::StatusOr<Identity> identity = VerifyUncached(token, &expires);
  if (identity.ok()) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kMaxCachedTokens) cache_.clear();
    cache_.emplace(std::string(token), Verified{*identity, expires});
  }
  return identity;
}

absl::StatusOr<Identity> TokenVerifier::VerifyUncached(absl::string_view token,
                                                       absl::Time* expires) const {
  const std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 3 || parts[2].empty()) {
    return Unauthenticated("malformed token (expected a signed JWT: header.payload.signature)");
  }
  std::error_code ec;
  jwt::jwt_header header;
  header.decode(jwt::string_view(parts[0].data(), parts[0].size()), ec);
  if (ec) return Unauthenticated("malformed token header");
  const std::string algorithm(jwt::alg_to_str(header.algo()));
  if (algorithm != "RS256" && algorithm != "ES256") {
    return Unauthenticated(
        absl::StrCat("algorithm ", algorithm, " is not accepted (RS256, ES256)"));
  }

  const jwt::string_view encoded(token.data(), token.size());
  const auto leeway = static_cast<uint32_t>(absl::ToInt64Seconds(options_.leeway));
  bool bad_signature = false;
  for (const Key& key : keys_) {
    if (key.algorithm != algorithm) continue;
    ec.clear();
    auto decoded = jwt::decode(encoded, jwt::params::algorithms({algorithm}), ec,
                               jwt::params::secret(key.pem), jwt::params::verify(true),
                               jwt::params::issuer(options_.issuer), jwt::params::leeway(leeway));
    if (ec == jwt::VerificationErrc::InvalidSignature ||
        ec == jwt::AlgorithmErrc::VerificationErr) {
      bad_signature = true;
      continue;  // Maybe another key of the set signed it.
    }
    if (ec == jwt::VerificationErrc::TokenExpired) return Unauthenticated("token expired");
    if (ec == jwt::VerificationErrc::ImmatureSignature) {
      return Unauthenticated("token not yet valid (nbf)");
    }
    if (ec == jwt::VerificationErrc::InvalidIssuer) {
      return Unauthenticated(absl::StrCat("wrong issuer (expected ", options_.issuer, ")"));
    }
    if (ec) return Unauthenticated(absl::StrCat("invalid token: ", ec.message()));

    const nlohmann::json& payload = decoded.payload().create_json_obj();
    if (!payload.contains("exp") || !payload["exp"].is_number()) {
      return Unauthenticated("token has no expiry (exp)");
    }
    *expires = absl::FromUnixSeconds(payload["exp"].get<int64_t>());
    bool audience_ok = false;
    if (auto aud = payload.find("aud"); aud != payload.end()) {
      if (aud->is_string()) audience_ok = *aud == options_.audience;
      if (aud->is_array()) {
        for (const auto& a : *aud) audience_ok |= a.is_string() && a == options_.audience;
      }
    }
    if (!audience_ok) {
      return Unauthenticated(absl::StrCat("wrong audience (expected ", options_.audience, ")"));
    }
    Identity identity;
    identity.subject = ClaimString(payload, "sub");
    identity.agency_id = ClaimString(payload, "agency_id");
    if (identity.subject.empty()) return Unauthenticated("token has no subject (sub)");
    if (identity.agency_id.empty()) return Unauthenticated("token has no agency_id claim");
    if (auto roles = payload.find("roles"); roles != payload.end() && roles->is_array()) {
      for (const auto& r : *roles) {
        if (!r.is_string()) continue;
        if (auto role = ParseRole(r.get<std::string>())) identity.roles.insert(*role);
      }
    }
    return identity;
  }
  return Unauthenticated(bad_signature ? "signature does not verify with any configured key"
                                       : "no configured key for this algorithm");
}

absl::StatusOr<Identity> TokenVerifier::Authenticate(const grpc::ServerContextBase& context) const {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return Unauthenticated("missing authorization metadata (expected \"Bearer <JWT>\")");
  }
  const absl::string_view value(it->second.data(), it->second.size());
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(value, kBearer)) {
    return Unauthenticated("authorization metadata is not a Bearer token");
  }
  return Verify(value.substr(kBearer.size()));
}

}  // namespace peerpath

namespace peerpath {

absl::StatusOr<std::string> MintToken(absl::string_view private_key_pem, absl::string_view key_id,
                                      const TokenClaims& claims) {
  BioPtr bio(BIO_new_mem_buf(private_key_pem.data(), static_cast<int>(private_key_pem.size())),
             BIO_free);
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
  if (key == nullptr) return absl::InvalidArgumentError("unreadable PEM private key");
  const std::string algorithm = AlgorithmFor(key.get());
  if (algorithm.empty()) return absl::InvalidArgumentError("need an RSA or EC P-256 private key");
  std::error_code ec;
  jwt::jwt_object token{jwt::params::algorithm(algorithm),
                        jwt::params::secret(std::string(private_key_pem))};
  if (!key_id.empty()) token.header().add_header("kid", std::string(key_id));
  token.add_claim("iss", claims.issuer)
      .add_claim("aud", claims.audience)
      .add_claim("sub", claims.subject)
      .add_claim("agency_id", claims.agency_id)
      .add_claim("roles", nlohmann::json(claims.roles))
      .add_claim("iat", absl::ToUnixSeconds(claims.issued_at))
      .add_claim("nbf", absl::ToUnixSeconds(claims.issued_at))
      .add_claim("exp", absl::ToUnixSeconds(claims.expires_at));
  std::string signed_token = token.signature(ec);
  if (ec) return absl::InternalError(absl::StrCat("signing failed: ", ec.message()));
  return signed_token;
}

}  // namespace peerpath
