#pragma once

// Client channels for service-to-service calls: TLS (and mutual TLS when a client certificate is
// configured) to anything not on loopback; plaintext only to loopback for local runs, or anywhere
// when the operator said a mesh provides mTLS (--allow_plaintext).

#include <grpcpp/channel.h>
#include <grpcpp/security/tls_certificate_provider.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace peerpath {

struct ChannelOptions {
  std::string ca_file;    // PEM roots that sign the server's certificate. Set: TLS.
  std::string cert_file;  // PEM client certificate chain (mutual TLS), with key_file.
  std::string key_file;
  std::string server_name_override;  // Expected name in the server certificate, if not the host.
  // Plaintext (no ca_file) also to non-loopback targets: a service mesh encrypts the traffic.
  bool allow_plaintext = false;
  // How often the files above are re-read: a rotated CA bundle or client certificate is used by
  // the next connections without a restart. Whole seconds.
  absl::Duration reload_interval = absl::Seconds(60);
};

// gRPC's watcher of TLS files, re-reading them every `interval` (whole seconds, at least one):
// the private key and certificate chain (both empty: no identity, a client without a
// certificate) and the CA bundle (empty with a key: no roots to watch). Servers and channels both
// take their credentials from it, so a certificate rotated on disk is used without a restart.
std::shared_ptr<grpc::experimental::CertificateProviderInterface> WatchCertificateFiles(
    const std::string& key_file, const std::string& cert_file, const std::string& ca_file,
    absl::Duration interval);

// The files are read at once (so a missing one is an error here) and then watched by gRPC's
// FileWatcherCertificateProvider. INVALID_ARGUMENT when a file cannot be read, the cert/key pair is
// incomplete, or plaintext is asked for a non-loopback target without allow_plaintext.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options);

}  // namespace peerpath
