#include "tests/support/service_process.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/support/test_tokens.h"

extern char** environ;

namespace peerpath::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::string TempLogPath(const std::string& service) {
  std::string pattern = absl::StrCat(::testing::TempDir(), "peerpath-", service, "-XXXXXX");
  int fd = mkstemp(pattern.data());
  if (fd >= 0) close(fd);
  return pattern;
}

pid_t Spawn(const std::string& service, const std::vector<std::string>& args,
            const std::string& log_path, const std::map<std::string, std::string>& env) {
  std::vector<std::string> argv_storage{ServiceBinary(service)};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    // Tests pass configuration explicitly; a developer's PEERPATH_* must not leak in.
    if (entry.rfind("PEERPATH_", 0) == 0 && entry.rfind("PEERPATH_TEST_", 0) != 0) continue;
    env_storage.push_back(entry);
  }
  for (const auto& [k, v] : env) env_storage.push_back(absl::StrCat(k, "=", v));
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_APPEND, 0);
  posix_spawn_file_actions_addopen(&actions, 2, log_path.c_str(), O_WRONLY | O_APPEND, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start " + argv_storage[0]);
  return pid;
}

std::optional<int> WaitPid(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

size_t CurlWrite(char* data, size_t size, size_t count, void* out) {
  static_cast<std::string*>(out)->append(data, size * count);
  return size * count;
}

}  // namespace

std::string ServiceBinary(const std::string& service) {
  return absl::StrCat(PEERPATH_BUILD_DIR, "/services/", service, "/peerpath-", service);
}

ExitResult RunToExit(const std::string& service, const std::vector<std::string>& args,
                     std::chrono::seconds timeout, const std::map<std::string, std::string>& env) {
  const std::string log = TempLogPath(service);
  const pid_t pid = Spawn(service, args, log, env);
  ExitResult result;
  auto code = WaitPid(pid, timeout);
  if (!code) {
    kill(pid, SIGKILL);
    WaitPid(pid, std::chrono::seconds(5));
  }
  result.exit_code = code.value_or(-1);
  result.log = ReadAll(log);
  unlink(log.c_str());
  return result;
}

ServiceProcess::ServiceProcess(const std::string& service, const std::string& database_url,
                               std::vector<std::string> extra_args)
    : log_path_(TempLogPath(service)) {
  std::vector<std::string> args{"serve", "--listen_address=127.0.0.1:0",
                                "--metrics_address=127.0.0.1:0", "--database_url=" + database_url,
                                "--log_level=debug"};
  // Served as the runtime role; migrated at start-up as the schema's owner role.
  const std::string runtime_user = "peerpath_" + service + "@";
  if (auto at = database_url.find(runtime_user); at != std::string::npos) {
    std::string owner_url = database_url;
    owner_url.replace(at, runtime_user.size(), "peerpath_" + service + "_owner@");
    args.push_back("--migration_database_url=" + owner_url);
  }
  for (const std::string& flag : TokenFlags()) args.push_back(flag);
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  pid_ = Spawn(service, args, log_path_, {});
}

ServiceProcess::~ServiceProcess() {
  if (!exit_code_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    WaitPid(pid_, std::chrono::seconds(5));
  }
  unlink(log_path_.c_str());
}

bool ServiceProcess::WaitListening(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    for (absl::string_view line : absl::StrSplit(Log(), '\n')) {
      auto json = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
      if (json.is_object() && json.value("msg", "") == "listening") {
        grpc_port_ = json.value("grpc_port", 0);
        metrics_port_ = json.value("metrics_port", 0);
        return grpc_port_ > 0;
      }
    }
    if (WaitExit(std::chrono::milliseconds(0))) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

bool ServiceProcess::WaitHealth(bool serving, const std::string& service_name,
                                std::chrono::milliseconds timeout) {
  if (grpc_port_ == 0 && !WaitListening(timeout)) return false;
  const std::string want = serving ? "SERVING" : "NOT_SERVING";
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (HealthStatus(Channel(), service_name) == want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::shared_ptr<grpc::Channel> ServiceProcess::Channel() {
  if (channel_ == nullptr) {
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port_),
                                   grpc::InsecureChannelCredentials());
  }
  return channel_;
}

void ServiceProcess::Signal(int signal_number) {
  if (pid_ > 0 && !exit_code_) kill(pid_, signal_number);
}

std::optional<int> ServiceProcess::WaitExit(std::chrono::milliseconds timeout) {
  if (!exit_code_) exit_code_ = WaitPid(pid_, timeout);
  return exit_code_;
}

std::string ServiceProcess::Log() const { return ReadAll(log_path_); }

std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel,
                         const std::string& service_name) {
  // grpc.health.v1.HealthCheckRequest{service = 1} and HealthCheckResponse{status = 1}, encoded
  // by hand: Debian ships no health.proto to generate from, and the wire form is two bytes.
  std::string request;
  if (!service_name.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service_name.size()));
    request += service_name;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  std::mutex mu;
  std::condition_variable done_cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                 &response_buffer, [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = std::move(s);
                   done = true;
                   done_cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  done_cv.wait(lock, [&] { return done; });
  if (!status.ok()) return absl::StrCat("error:", status.error_code());
  std::vector<grpc::Slice> slices;
  (void)response_buffer.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  const int value = bytes.size() >= 2 && bytes[0] == 0x08 ? bytes[1] : 0;
  switch (value) {
    case 1:
      return "SERVING";
    case 2:
      return "NOT_SERVING";
    case 3:
      return "SERVICE_UNKNOWN";
    default:
      return "UNKNOWN";
  }
}

std::string HttpGet(int port, const std::string& path) {
  std::string body;
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return body;
  const std::string url = absl::StrCat("http://127.0.0.1:", port, path);
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, CurlWrite);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 5L);
  if (curl_easy_perform(curl) != CURLE_OK) body.clear();
  curl_easy_cleanup(curl);
  return body;
}

double MetricValue(const std::string& exposition, const std::string& metric,
                   const std::map<std::string, std::string>& labels) {
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    const auto brace = line.find('{');
    const auto space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    const absl::string_view name = line.substr(0, std::min(brace, space));
    if (name != metric) continue;
    const absl::string_view label_text =
        brace == absl::string_view::npos ? "" : line.substr(brace, line.find('}') - brace);
    bool match = true;
    for (const auto& [key, value] : labels) {
      if (label_text.find(absl::StrCat(key, "=\"", value, "\"")) == absl::string_view::npos) {
        match = false;
        break;
      }
    }
    if (match) sum += std::stod(std::string(line.substr(space + 1)));
  }
  return sum;
}

HistogramTotals ReadHistogram(int metrics_port, const std::string& histogram) {
  const std::string text = HttpGet(metrics_port, "/metrics");
  return {MetricValue(text, histogram + "_sum", {}), MetricValue(text, histogram + "_count", {})};
}

double MeanBetween(const HistogramTotals& before, const HistogramTotals& after) {
  const double count = after.count - before.count;
  return count > 0 ? (after.sum - before.sum) / count : 0.0;
}

}  // namespace peerpath::testing
