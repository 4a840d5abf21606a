#include "common/channel.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/config.h"

namespace peerpath {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options) {
  grpc::ChannelArguments args;
  if (options.ca_file.empty()) {
    if (!options.cert_file.empty()) {
      return absl::InvalidArgumentError("a client certificate needs a CA file (TLS)");
    }
    if (!options.allow_plaintext && !IsLoopbackAddress(target)) {
      return absl::InvalidArgumentError(
          absl::StrCat("a plaintext channel is only allowed to loopback (or with --allow_plaintext "
                       "behind a mesh that provides mTLS); give a CA file for ",
                       target));
    }
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError("client certificate and key must be given together");
  }
  grpc::SslCredentialsOptions ssl;
  auto ca = ReadPem(options.ca_file);
  if (!ca.ok()) return ca.status();
  ssl.pem_root_certs = *ca;
  if (!options.cert_file.empty()) {
    auto cert = ReadPem(options.cert_file);
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(options.key_file);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  if (!options.server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.server_name_override);
  }
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args);
}

}  // namespace peerpath
