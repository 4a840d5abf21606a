#pragma once

// Starts a real PeerPath service binary for a test: on loopback port 0 (no port clashes between
// parallel tests), logging to a file the test can read, stopped by the destructor.

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace peerpath::testing {

// Path of the built binary peerpath-<service>.
std::string ServiceBinary(const std::string& service);

struct ExitResult {
  int exit_code = -1;  // -1: killed by a signal or still running at the timeout.
  std::string log;
};

// Runs `peerpath-<service> args...` to completion with `env` added to the environment.
ExitResult RunToExit(const std::string& service, const std::vector<std::string>& args,
                     std::chrono::seconds timeout = std::chrono::seconds(60),
                     const std::map<std::string, std::string>& env = {});

class ServiceProcess {
 public:
  // Starts `peerpath-<service> serve` against `database_url` with `extra_args` appended.
  ServiceProcess(const std::string& service, const std::string& database_url,
                 std::vector<std::string> extra_args = {});
  ~ServiceProcess();

  // Waits for the "listening" log line; false on timeout or early exit.
  bool WaitListening(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // Waits until health of `service_name` ("" = server) equals `serving`.
  bool WaitHealth(bool serving, const std::string& service_name = "",
                  std::chrono::milliseconds timeout = std::chrono::seconds(20));

  pid_t pid() const { return pid_; }
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::shared_ptr<grpc::Channel> Channel();

  void Signal(int signal_number);
  // Exit code once the process ended within `timeout`; nullopt if still running.
  std::optional<int> WaitExit(std::chrono::milliseconds timeout);
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::optional<int> exit_code_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Health status of `service_name` on `channel`: "SERVING", "NOT_SERVING", or the RPC error code.
std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel,
                         const std::string& service_name = "");

// GET http://127.0.0.1:<port><path>; returns the body ("" on failure).
std::string HttpGet(int port, const std::string& path);

// Sum of the samples of `metric` whose labels include every `labels` pair, from Prometheus text.
double MetricValue(const std::string& exposition, const std::string& metric,
                   const std::map<std::string, std::string>& labels);

// A histogram's totals (its _sum and _count) as a service exposes them on `metrics_port`; zeros
// when the metrics cannot be read.
struct HistogramTotals {
  double sum = 0;
  double count = 0;
};
HistogramTotals ReadHistogram(int metrics_port, const std::string& histogram);
// The mean of what the histogram observed between two readings; 0 when it observed nothing.
double MeanBetween(const HistogramTotals& before, const HistogramTotals& after);

}  // namespace peerpath::testing
