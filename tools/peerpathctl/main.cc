// peerpathctl: the PeerPath command-line tool.
//
//   peerpathctl token --agency=A --role=R[,R2] --sub=S [--ttl=1h] [--key=FILE]
//       Prints a development bearer token signed with the local development key
//       (.local/dev-keys/signing-key.pem, made by tools/run-local). Services trust it only when
//       started with --allow_dev_tokens and --jwt_issuer=peerpath-dev.
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/auth.h"

ABSL_FLAG(std::string, agency, "", "token: the caller's agency id");
ABSL_FLAG(std::string, role, "", "token: comma-separated roles, e.g. clinician,supervisor");
ABSL_FLAG(std::string, sub, "", "token: the caller's subject (staff id)");
ABSL_FLAG(absl::Duration, ttl, absl::Hours(1), "token: lifetime");
ABSL_FLAG(std::string, key, ".local/dev-keys/signing-key.pem", "token: PEM private signing key");
ABSL_FLAG(std::string, issuer, peerpath::kDevTokenIssuer, "token: `iss` claim");
ABSL_FLAG(std::string, audience, "peerpath", "token: `aud` claim");

namespace {

int Token() {
  std::vector<std::string> problems;
  const std::string agency = absl::GetFlag(FLAGS_agency);
  const std::string sub = absl::GetFlag(FLAGS_sub);
  std::vector<std::string> roles =
      absl::StrSplit(absl::GetFlag(FLAGS_role), ',', absl::SkipWhitespace());
  if (agency.empty()) problems.push_back("--agency is required");
  if (sub.empty()) problems.push_back("--sub is required");
  if (roles.empty()) problems.push_back("--role is required");
  for (const std::string& role : roles) {
    if (!peerpath::ParseRole(role)) problems.push_back("unknown role: " + role);
  }
  if (absl::GetFlag(FLAGS_ttl) <= absl::ZeroDuration()) problems.push_back("--ttl must be > 0");
  std::ifstream in(absl::GetFlag(FLAGS_key));
  if (!in) problems.push_back("cannot read --key " + absl::GetFlag(FLAGS_key));
  if (!problems.empty()) {
    for (const auto& p : problems) std::cerr << "peerpathctl token: " << p << "\n";
    return 2;
  }
  std::stringstream pem;
  pem << in.rdbuf();
  const absl::Time now = absl::Now();
  auto token = peerpath::MintToken(pem.str(), "dev",
                                   {absl::GetFlag(FLAGS_issuer), absl::GetFlag(FLAGS_audience), sub,
                                    agency, roles, now, now + absl::GetFlag(FLAGS_ttl)});
  if (!token.ok()) {
    std::cerr << "peerpathctl token: " << token.status().message() << "\n";
    return 1;
  }
  std::cout << *token << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "PeerPath command-line tool.\n\nUsage:\n  peerpathctl token --agency=A --role=R[,R2] "
      "--sub=S [--ttl=1h] [--key=FILE]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const std::string command = args.size() > 1 ? args[1] : "";
  if (command == "token" && args.size() == 2) return Token();
  std::cerr << "usage: peerpathctl token --agency=A --role=R --sub=S (see --help)\n";
  return 2;
}
