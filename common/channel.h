#pragma once

// Client channels for service-to-service calls: TLS (and mutual TLS when a client certificate is
// configured) to anything not on loopback; plaintext only to loopback for local runs, or anywhere
// when the operator said a mesh provides mTLS (--allow_plaintext).

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace peerpath {

struct ChannelOptions {
  std::string ca_file;    // PEM roots that sign the server's certificate. Set: TLS.
  std::string cert_file;  // PEM client certificate chain (mutual TLS), with key_file.
  std::string key_file;
  std::string server_name_override;  // Expected name in the server certificate, if not the host.
  // Plaintext (no ca_file) also to non-loopback targets: a service mesh encrypts the traffic.
  bool allow_plaintext = false;
};

// INVALID_ARGUMENT when a file cannot be read, the cert/key pair is incomplete, or plaintext is
// asked for a non-loopback target without allow_plaintext.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options);

}  // namespace peerpath
