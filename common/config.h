#pragma once

// Start-up configuration shared by every PeerPath binary. Each flag has an environment variable
// PEERPATH_<FLAG_NAME_IN_UPPER_CASE>; a flag on the command line wins over the environment.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/channel.h"
#include "common/log.h"

namespace peerpath {

struct ServerConfig {
  std::string listen_address;          // gRPC, host:port.
  std::string metrics_address;         // Prometheus /metrics over HTTP, host:port.
  std::string database_url;            // The runtime role: owns nothing, no BYPASSRLS.
  std::string migration_database_url;  // The schema owner's; defaults to database_url.
  std::string database_runtime_role;   // Granted privileges after migrations; empty: none.
  int db_pool_size = 8;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_file;  // Set: clients must present a certificate signed by this CA (mTLS).
  // How often the server's and the channels' TLS files are re-read (certificate rotation).
  absl::Duration tls_reload_interval = absl::Seconds(60);
  bool allow_plaintext = false;
  int max_message_bytes = 4 << 20;
  int max_concurrent_streams = 100;  // Per client connection (HTTP/2 SETTINGS).
  // Call-handling threads kept waiting between calls (gRPC's sync server MAX_POLLERS): more
  // start under load, and those beyond this many end when they fall idle.
  int idle_handler_threads = 64;
  absl::Duration max_call_duration = absl::Seconds(30);  // statement_timeout of every query.
  absl::Duration shutdown_grace = absl::Seconds(10);
  bool enable_reflection = false;
  bool migrate_on_start = true;
  absl::Duration database_wait = absl::Seconds(30);
  log::Level log_level = log::Level::kInfo;
  std::string jwt_keys_file;
  std::string jwt_issuer;
  std::string jwt_audience = "peerpath";
  absl::Duration jwt_leeway = absl::Seconds(30);
  bool allow_dev_tokens = false;
  // Calls to other services: this service's own token, and the TLS settings of its channels
  // (MakeChannel in common/channel.h).
  std::string service_token_file;
  ChannelOptions client_tls;
};

struct ServerDefaults {
  std::string listen_address;
  std::string metrics_address;
  std::string runtime_role = "";
};

// The flags' names, in the order --help lists them.
const std::vector<std::string>& ServerFlagNames();

// "database_url" -> "PEERPATH_DATABASE_URL".
std::string EnvironmentVariableFor(const std::string& flag_name);

// Applies PEERPATH_* environment variables to the flags, then parses argv (which wins). Exits with
// a message naming the variable or flag on a bad value. Returns the positional arguments after
// the program name (the subcommand).
std::vector<std::string> ParseFlagsAndEnvironment(int argc, char** argv);

// Reads the flags into a config, filling empty addresses from `defaults`, and checks the
// combination (TLS files go together, plaintext only on loopback unless allowed, ranges; when
// `serving`, the token verification settings too).
absl::StatusOr<ServerConfig> ServerConfigFromFlags(const ServerDefaults& defaults,
                                                   bool serving = true);

// A service's own flag: its value when set, else the environment variable `env`, else `fallback`
// (the services' main.cc, for flags beyond the server's).
std::string FlagOrEnv(const std::string& flag_value, const char* env,
                      const std::string& fallback = "");

// FlagOrEnv for a whole number from 1 to `most` (`fallback` when neither is set); any other value
// is bad configuration: "--<flag> '<value>' is not a whole number from 1 to <most>".
int WholeNumberFlagOrEnv(const std::string& program, const std::string& flag,
                         const std::string& flag_value, const char* env, int fallback, int most);

// Bad configuration at start-up is fatal, never a silent default: prints "<program>: <message>"
// and exits with code 2.
[[noreturn]] void ExitOnBadConfiguration(const std::string& program, const std::string& message);

// True for 127.0.0.0/8, ::1 and localhost.
bool IsLoopbackAddress(const std::string& host_port);

}  // namespace peerpath
