// Transport security of a real binary: TLS, and mutual TLS refusing clients without a trusted
// certificate. Certificates are made for the test with the openssl command.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "common/channel.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class Pki {
 public:
  Pki() {
    char pattern[] = "/tmp/peerpath-pki-XXXXXX";
    dir_ = mkdtemp(pattern);
    MakeCa("ca");
    MakeCa("other-ca");
    MakeLeaf("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1");
    MakeLeaf("client", "ca", "extendedKeyUsage=clientAuth");
    MakeLeaf("stranger", "other-ca", "extendedKeyUsage=clientAuth");
  }
  ~Pki() { fs::remove_all(dir_); }
  std::string File(const std::string& name) const { return (dir_ / name).string(); }
  // Replaces `to` with a copy of `from` in one rename, as a renewed secret appears.
  void Replace(const std::string& from, const std::string& to) {
    fs::copy_file(File(from), File(to + ".new"), fs::copy_options::overwrite_existing);
    fs::rename(File(to + ".new"), File(to));
  }
  void MakeServerLeaf(const std::string& name, const std::string& ca) {
    MakeLeaf(name, ca, "subjectAltName=DNS:localhost,IP:127.0.0.1");
  }

 private:
  void Run(const std::string& command) {
    ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
  }
  void MakeCa(const std::string& name) {
    Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "
        "/CN=" +
        name + " -keyout " + File(name + ".key") + " -out " + File(name + ".pem"));
  }
  void MakeLeaf(const std::string& name, const std::string& ca, const std::string& ext) {
    Run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=" + name +
        " -keyout " + File(name + ".key") + " -out " + File(name + ".csr"));
    Run("bash -c 'openssl x509 -req -in " + File(name + ".csr") + " -CA " + File(ca + ".pem") +
        " -CAkey " + File(ca + ".key") + " -CAcreateserial -days 2 -out " + File(name + ".pem") +
        " -extfile <(printf \"" + ext + "\")'");
  }
  fs::path dir_;
};

std::string Health(const std::shared_ptr<grpc::Channel>& channel) { return HealthStatus(channel); }

TEST(TransportSecurity, MutualTlsRefusesClientsWithoutATrustedCertificate) {
  Pki pki;
  auto db = TestDatabase::Create();
  ServiceProcess process(
      "consent", db->UrlFor("consent"),
      {"--tls_cert_file=" + pki.File("server.pem"), "--tls_key_file=" + pki.File("server.key"),
       "--tls_ca_file=" + pki.File("ca.pem")});
  ASSERT_TRUE(process.WaitListening()) << process.Log();
  const std::string target = "localhost:" + std::to_string(process.grpc_port());

  auto trusted =
      MakeChannel(target, {pki.File("ca.pem"), pki.File("client.pem"), pki.File("client.key"), ""});
  ASSERT_TRUE(trusted.ok()) << trusted.status();
  bool serving = false;
  for (int i = 0; i < 200 && !serving; ++i) {
    serving = Health(*trusted) == "SERVING";
    if (!serving) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(serving) << process.Log();

  auto no_client_cert = MakeChannel(target, {pki.File("ca.pem"), "", "", ""});
  ASSERT_TRUE(no_client_cert.ok());
  EXPECT_EQ(Health(*no_client_cert), "error:14");  // UNAVAILABLE: handshake refused.

  auto stranger = MakeChannel(
      target, {pki.File("ca.pem"), pki.File("stranger.pem"), pki.File("stranger.key"), ""});
  ASSERT_TRUE(stranger.ok());
  EXPECT_EQ(Health(*stranger), "error:14");

  auto plaintext = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  EXPECT_EQ(Health(plaintext), "error:14");

  // A client that does not trust the server's CA refuses the server.
  auto wrong_roots = MakeChannel(
      target, {pki.File("other-ca.pem"), pki.File("client.pem"), pki.File("client.key"), ""});
  ASSERT_TRUE(wrong_roots.ok());
  EXPECT_EQ(Health(*wrong_roots), "error:14");
}

// Calls Health on `channel` until it answers `want` (a channel in backoff retries slowly).
bool Eventually(const std::shared_ptr<grpc::Channel>& channel, const std::string& want) {
  for (int i = 0; i < 300; ++i) {
    if (Health(channel) == want) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

TEST(TransportSecurity, RotatedCertificatesAreUsedWithoutARestart) {
  Pki pki;
  pki.MakeServerLeaf("renewed", "other-ca");
  pki.Replace("server.pem", "served.pem");
  pki.Replace("server.key", "served.key");
  auto db = TestDatabase::Create();
  ServiceProcess process("consent", db->UrlFor("consent"),
                         {"--tls_cert_file=" + pki.File("served.pem"),
                          "--tls_key_file=" + pki.File("served.key"), "--tls_reload_interval=1s"});
  ASSERT_TRUE(process.WaitListening()) << process.Log();
  const std::string target = "localhost:" + std::to_string(process.grpc_port());
  auto old_roots = [&] { return *MakeChannel(target, {pki.File("ca.pem"), "", "", ""}); };
  auto new_roots = [&] { return *MakeChannel(target, {pki.File("other-ca.pem"), "", "", ""}); };
  ASSERT_TRUE(Eventually(old_roots(), "SERVING")) << process.Log();
  EXPECT_EQ(Health(new_roots()), "error:14");

  // The certificate is renewed on disk (by another CA, so the change shows): new handshakes get
  // it within the reload interval, without a restart.
  pki.Replace("renewed.key", "served.key");
  pki.Replace("renewed.pem", "served.pem");
  EXPECT_TRUE(Eventually(new_roots(), "SERVING")) << process.Log();
  EXPECT_EQ(Health(old_roots()), "error:14");

  // A client's CA bundle is re-read too: a channel that refuses the server while its bundle
  // holds the old CA connects, unchanged, once the bundle is renewed.
  pki.Replace("ca.pem", "trusted.pem");
  ChannelOptions follower{pki.File("trusted.pem"), "", "", ""};
  follower.reload_interval = absl::Seconds(1);
  auto channel = MakeChannel(target, follower);
  ASSERT_TRUE(channel.ok()) << channel.status();
  EXPECT_EQ(Health(*channel), "error:14");
  pki.Replace("other-ca.pem", "trusted.pem");
  EXPECT_TRUE(Eventually(*channel, "SERVING"));
}

TEST(TransportSecurity, PlaintextChannelsOnlyToLoopbackUnlessAMeshProvidesMtls) {
  EXPECT_TRUE(MakeChannel("127.0.0.1:7103", {}).ok());
  auto refused = MakeChannel("consent.peerpath.svc:7100", {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  // The operator's --allow_plaintext (a mesh encrypts): plaintext to peers is allowed too, but
  // a client certificate without a CA is still a mistake.
  ChannelOptions mesh;
  mesh.allow_plaintext = true;
  EXPECT_TRUE(MakeChannel("consent.peerpath.svc:7100", mesh).ok());
  mesh.cert_file = "x.pem";
  mesh.key_file = "x.key";
  EXPECT_EQ(MakeChannel("consent:7100", mesh).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeChannel("consent:7100", {"/nonexistent/ca.pem", "", "", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeChannel("consent:7100", {"/etc/ssl/certs/ca-certificates.crt", "x.pem", "", ""})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace peerpath::testing
