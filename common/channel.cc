#include "common/channel.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <algorithm>
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

std::shared_ptr<grpc::experimental::CertificateProviderInterface> WatchCertificateFiles(
    const std::string& key_file, const std::string& cert_file, const std::string& ca_file,
    absl::Duration interval) {
  const auto seconds =
      static_cast<unsigned int>(std::max<int64_t>(1, absl::ToInt64Seconds(interval)));
  if (key_file.empty()) {
    return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(ca_file, seconds);
  }
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(key_file, cert_file,
                                                                              ca_file, seconds);
}

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
  // Read once here so that a missing or unreadable file is refused now, with its name; gRPC
  // then re-reads them every reload_interval (a certificate rotated on disk, e.g. a renewed
  // Kubernetes secret, is used by the next handshakes).
  for (const std::string* file : {&options.ca_file, &options.cert_file, &options.key_file}) {
    if (file->empty()) continue;
    if (auto pem = ReadPem(*file); !pem.ok()) return pem.status();
  }
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(WatchCertificateFiles(options.key_file, options.cert_file,
                                                     options.ca_file, options.reload_interval));
  tls.watch_root_certs();
  if (!options.cert_file.empty()) tls.watch_identity_key_cert_pairs();
  if (!options.server_name_override.empty()) {
    args.SetSslTargetNameOverride(options.server_name_override);
  }
  return grpc::CreateCustomChannel(target, grpc::experimental::TlsCredentials(tls), args);
}

}  // namespace peerpath
