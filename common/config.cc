#include "common/config.h"

#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/auth.h"

ABSL_FLAG(std::string, listen_address, "",
          "gRPC listen address host:port (default: the service's loopback port)");
ABSL_FLAG(std::string, metrics_address, "",
          "Prometheus metrics HTTP address host:port (default: the service's loopback port)");
ABSL_FLAG(std::string, database_url, "",
          "PostgreSQL connection URI (libpq), e.g. postgresql://user@host:5432/peerpath");
ABSL_FLAG(std::string, migration_database_url, "",
          "PostgreSQL URI of the role that owns the service's schema and applies migrations "
          "(default: --database_url)");
ABSL_FLAG(std::string, database_runtime_role, "",
          "Role the service serves as, granted table privileges by each migration run (default: "
          "peerpath_<service>; \"-\" grants nothing)");
ABSL_FLAG(int, db_pool_size, 8, "Maximum number of database connections");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM server certificate chain; enables TLS");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA bundle for client certificates; set to require mutual TLS");
ABSL_FLAG(absl::Duration, tls_reload_interval, absl::Seconds(60),
          "How often the TLS files (server and client certificates, keys, CA bundles) are "
          "re-read, so a rotated certificate is served without a restart (whole seconds)");
ABSL_FLAG(bool, allow_plaintext, false,
          "Allow plaintext gRPC off loopback, listening and calling the other services (only "
          "behind a service mesh that provides mTLS)");
ABSL_FLAG(int, max_message_bytes, 4 << 20, "Largest request message accepted, in bytes");
ABSL_FLAG(int, max_concurrent_streams, 100,
          "Most calls (streams) one client connection may have open at once");
ABSL_FLAG(int, idle_handler_threads, 64,
          "Call-handling threads kept waiting between calls (gRPC's sync server MAX_POLLERS); "
          "more start under load, and those beyond this many end when idle. gRPC's own default, "
          "2, makes every burst of concurrent calls start and end threads");
ABSL_FLAG(absl::Duration, max_call_duration, absl::Seconds(30),
          "Longest any database statement of a call may run (PostgreSQL statement_timeout); "
          "event subscriptions are long-lived streams of short reads");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "How long in-flight calls may run after SIGTERM before they are cancelled");
ABSL_FLAG(bool, enable_reflection, false, "Serve gRPC server reflection");
ABSL_FLAG(bool, migrate_on_start, true, "Apply pending schema migrations at start-up");
ABSL_FLAG(absl::Duration, database_wait, absl::Seconds(30),
          "How long `migrate` waits for an unreachable database before failing");
ABSL_FLAG(std::string, log_level, "info", "Minimum log level: debug, info, warn or error");
ABSL_FLAG(std::string, jwt_keys_file, "",
          "Public keys that sign caller tokens: a JWKS document or PEM public keys/certificates");
ABSL_FLAG(std::string, jwt_issuer, "", "Required `iss` of caller tokens");
ABSL_FLAG(std::string, jwt_audience, "peerpath", "Required `aud` of caller tokens");
ABSL_FLAG(absl::Duration, jwt_leeway, absl::Seconds(30), "Clock skew tolerated on exp and nbf");
ABSL_FLAG(std::string, service_token_file, "",
          "This service's own bearer token (role `service`) for calls to other services; re-read "
          "when the file changes");
ABSL_FLAG(std::string, client_tls_ca_file, "",
          "PEM CA that signs the other services' certificates; set: calls to them use TLS");
ABSL_FLAG(std::string, client_tls_cert_file, "",
          "PEM client certificate for calls to other services (mutual TLS), with the key file");
ABSL_FLAG(std::string, client_tls_key_file, "", "PEM private key of --client_tls_cert_file");
ABSL_FLAG(bool, allow_dev_tokens, false,
          "Trust the development issuer \"peerpath-dev\" (local runs only; never in production)");

namespace peerpath {

const std::vector<std::string>& ServerFlagNames() {
  static const auto* const names =
      new std::vector<std::string>{"listen_address",        "metrics_address",
                                   "database_url",          "migration_database_url",
                                   "database_runtime_role", "db_pool_size",
                                   "tls_cert_file",         "tls_key_file",
                                   "tls_ca_file",           "allow_plaintext",
                                   "max_message_bytes",     "max_concurrent_streams",
                                   "max_call_duration",     "shutdown_grace",
                                   "enable_reflection",     "migrate_on_start",
                                   "database_wait",         "log_level",
                                   "jwt_keys_file",         "jwt_issuer",
                                   "jwt_audience",          "jwt_leeway",
                                   "allow_dev_tokens",      "service_token_file",
                                   "client_tls_ca_file",    "client_tls_cert_file",
                                   "client_tls_key_file",   "tls_reload_interval",
                                   "idle_handler_threads"};
  return *names;
}

std::string EnvironmentVariableFor(const std::string& flag_name) {
  return "PEERPATH_" + absl::AsciiStrToUpper(flag_name);
}

std::vector<std::string> ParseFlagsAndEnvironment(int argc, char** argv) {
  for (const std::string& name : ServerFlagNames()) {
    const std::string variable = EnvironmentVariableFor(name);
    const char* value = std::getenv(variable.c_str());
    if (value == nullptr) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    std::string error;
    if (flag == nullptr || !flag->ParseFrom(value, &error)) {
      std::cerr << "invalid value in environment variable " << variable << ": " << error << "\n";
      std::exit(2);
    }
  }
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  return std::vector<std::string>(positional.begin() + 1, positional.end());
}

std::string FlagOrEnv(const std::string& flag_value, const char* env, const std::string& fallback) {
  if (!flag_value.empty()) return flag_value;
  const char* value = std::getenv(env);
  return value != nullptr && *value != '\0' ? value : fallback;
}

int WholeNumberFlagOrEnv(const std::string& program, const std::string& flag,
                         const std::string& flag_value, const char* env, int fallback, int most) {
  const std::string text = FlagOrEnv(flag_value, env, absl::StrCat(fallback));
  int value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < 1 || value > most) {
    ExitOnBadConfiguration(
        program, absl::StrCat("--", flag, " '", text, "' is not a whole number from 1 to ", most));
  }
  return value;
}

void ExitOnBadConfiguration(const std::string& program, const std::string& message) {
  std::cerr << program << ": " << message << "\n";
  std::exit(2);
}

bool IsLoopbackAddress(const std::string& host_port) {
  std::string host = host_port;
  if (!host.empty() && host.front() == '[') {
    host = host.substr(1, host.find(']') - 1);
  } else if (auto colon = host.rfind(':'); colon != std::string::npos) {
    host = host.substr(0, colon);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

absl::StatusOr<ServerConfig> ServerConfigFromFlags(const ServerDefaults& defaults, bool serving) {
  ServerConfig c;
  c.listen_address = absl::GetFlag(FLAGS_listen_address);
  if (c.listen_address.empty()) c.listen_address = defaults.listen_address;
  c.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (c.metrics_address.empty()) c.metrics_address = defaults.metrics_address;
  c.database_url = absl::GetFlag(FLAGS_database_url);
  c.migration_database_url = absl::GetFlag(FLAGS_migration_database_url);
  if (c.migration_database_url.empty()) c.migration_database_url = c.database_url;
  c.database_runtime_role = absl::GetFlag(FLAGS_database_runtime_role);
  if (c.database_runtime_role.empty()) c.database_runtime_role = defaults.runtime_role;
  if (c.database_runtime_role == "-") c.database_runtime_role.clear();
  c.db_pool_size = absl::GetFlag(FLAGS_db_pool_size);
  c.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  c.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  c.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  c.allow_plaintext = absl::GetFlag(FLAGS_allow_plaintext);
  c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  c.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  c.idle_handler_threads = absl::GetFlag(FLAGS_idle_handler_threads);
  c.max_call_duration = absl::GetFlag(FLAGS_max_call_duration);
  c.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  c.enable_reflection = absl::GetFlag(FLAGS_enable_reflection);
  c.migrate_on_start = absl::GetFlag(FLAGS_migrate_on_start);
  c.database_wait = absl::GetFlag(FLAGS_database_wait);
  c.jwt_keys_file = absl::GetFlag(FLAGS_jwt_keys_file);
  c.jwt_issuer = absl::GetFlag(FLAGS_jwt_issuer);
  c.jwt_audience = absl::GetFlag(FLAGS_jwt_audience);
  c.jwt_leeway = absl::GetFlag(FLAGS_jwt_leeway);
  c.allow_dev_tokens = absl::GetFlag(FLAGS_allow_dev_tokens);
  c.service_token_file = absl::GetFlag(FLAGS_service_token_file);
  c.client_tls.ca_file = absl::GetFlag(FLAGS_client_tls_ca_file);
  c.client_tls.cert_file = absl::GetFlag(FLAGS_client_tls_cert_file);
  c.client_tls.key_file = absl::GetFlag(FLAGS_client_tls_key_file);
  c.client_tls.allow_plaintext = c.allow_plaintext;
  c.tls_reload_interval = absl::GetFlag(FLAGS_tls_reload_interval);
  c.client_tls.reload_interval = c.tls_reload_interval;

  std::vector<std::string> problems;
  if (!log::ParseLevel(absl::GetFlag(FLAGS_log_level), &c.log_level)) {
    problems.push_back("--log_level must be debug, info, warn or error");
  }
  if (c.database_url.empty()) {
    problems.push_back("--database_url (or PEERPATH_DATABASE_URL) is required");
  }
  if (c.db_pool_size < 1 || c.db_pool_size > 256) {
    problems.push_back("--db_pool_size must be between 1 and 256");
  }
  if (c.max_message_bytes < 1024 || c.max_message_bytes > (64 << 20)) {
    problems.push_back("--max_message_bytes must be between 1024 and 67108864");
  }
  if (c.max_concurrent_streams < 1 || c.max_concurrent_streams > 10000) {
    problems.push_back("--max_concurrent_streams must be between 1 and 10000");
  }
  if (c.idle_handler_threads < 1 || c.idle_handler_threads > 1024) {
    problems.push_back("--idle_handler_threads must be between 1 and 1024");
  }
  if (c.max_call_duration < absl::Milliseconds(100) || c.max_call_duration > absl::Minutes(10)) {
    problems.push_back("--max_call_duration must be between 100ms and 10m");
  }
  if (c.shutdown_grace < absl::ZeroDuration() || c.shutdown_grace > absl::Minutes(10)) {
    problems.push_back("--shutdown_grace must be between 0s and 10m");
  }
  if (c.tls_reload_interval < absl::Seconds(1) || c.tls_reload_interval > absl::Hours(24) ||
      c.tls_reload_interval != absl::Trunc(c.tls_reload_interval, absl::Seconds(1))) {
    problems.push_back("--tls_reload_interval must be whole seconds between 1s and 24h");
  }
  if (c.client_tls.cert_file.empty() != c.client_tls.key_file.empty()) {
    problems.push_back("--client_tls_cert_file and --client_tls_key_file must be set together");
  }
  if (!c.client_tls.cert_file.empty() && c.client_tls.ca_file.empty()) {
    problems.push_back("--client_tls_cert_file (mutual TLS) needs --client_tls_ca_file");
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    problems.push_back("--tls_cert_file and --tls_key_file must be set together");
  }
  if (!c.tls_ca_file.empty() && c.tls_cert_file.empty()) {
    problems.push_back("--tls_ca_file (mutual TLS) needs --tls_cert_file and --tls_key_file");
  }
  if (c.tls_cert_file.empty() && !c.allow_plaintext && !IsLoopbackAddress(c.listen_address)) {
    problems.push_back(absl::StrCat(
        "refusing to serve plaintext on non-loopback address ", c.listen_address,
        ": set --tls_cert_file/--tls_key_file, or --allow_plaintext where a mesh provides mTLS"));
  }
  if (serving) {
    if (c.jwt_keys_file.empty()) {
      problems.push_back("--jwt_keys_file (public keys of the token issuer) is required");
    }
    if (c.jwt_issuer.empty()) problems.push_back("--jwt_issuer is required");
    if (c.jwt_audience.empty()) problems.push_back("--jwt_audience must not be empty");
    if (c.jwt_leeway < absl::ZeroDuration() || c.jwt_leeway > absl::Minutes(5)) {
      problems.push_back("--jwt_leeway must be between 0s and 5m");
    }
    if (c.jwt_issuer == kDevTokenIssuer && !c.allow_dev_tokens) {
      problems.push_back(absl::StrCat("the development issuer \"", kDevTokenIssuer,
                                      "\" is refused unless --allow_dev_tokens is set"));
    }
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad configuration: ", absl::StrJoin(problems, "; ")));
  }
  return c;
}

}  // namespace peerpath
