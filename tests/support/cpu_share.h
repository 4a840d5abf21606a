#pragma once

// The share of the machine's processor time a benchmark phase keeps busy, read from /proc/stat,
// for the benchmarks' bound from processor time alone: when a call needs parts A and B, each
// measured alone at rate r and busy share u, no implementation on this machine exceeds
// 1 / (u_A / r_A + u_B / r_B) calls per second. And where a phase's processor time went, part by
// part (the database server, the service, the benchmark's own client), from /proc/<pid>/stat.

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

namespace peerpath::testing {

// The machine's processor time since boot: busy (user, nice, system, irq, softirq) and available
// (busy plus idle and I/O wait; time stolen by the host is neither), in clock ticks.
struct CpuTimes {
  double busy = 0;
  double available = 0;
};

inline CpuTimes ReadCpuTimes() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq;
  if (cpu != "cpu") return {};
  const double busy = user + nice + system + irq + softirq;
  return {busy, busy + idle + iowait};
}

// The share of the available processor time kept busy between two readings, 0 to 1 (0 when
// /proc/stat cannot be read).
inline double ShareBetween(const CpuTimes& before, const CpuTimes& after) {
  const double available = after.available - before.available;
  return available > 0 ? (after.busy - before.busy) / available : 0.0;
}

// The share of the available processor time that `phase` kept busy.
inline double CpuShare(const std::function<void()>& phase) {
  const CpuTimes before = ReadCpuTimes();
  phase();
  return ShareBetween(before, ReadCpuTimes());
}

// 1 / (share_a / rate_a + share_b / rate_b): the most calls per second this machine's processors
// allow when each call needs one of part A and one of part B; 0 when a figure is missing.
inline double BoundFromCpu(double rate_a, double share_a, double rate_b, double share_b) {
  if (rate_a <= 0 || rate_b <= 0 || share_a <= 0 || share_b <= 0) return 0.0;
  return 1.0 / (share_a / rate_a + share_b / rate_b);
}

// A process's processor time in seconds from /proc/<pid>/stat (utime + stime, and with
// `children` the time of its children it has reaped: cutime + cstime); -1 when it cannot be read.
// `parent`, when given, receives its parent's pid.
inline double ProcessCpuSeconds(pid_t pid, bool children = false, pid_t* parent = nullptr) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return -1;
  // The command name (field 2) is in parentheses and may hold spaces: fields count from its end.
  const size_t end = line.rfind(')');
  if (end == std::string::npos) return -1;
  std::istringstream fields(line.substr(end + 2));
  std::vector<std::string> f;
  for (std::string field; fields >> field && f.size() < 15;) f.push_back(field);
  if (f.size() < 15) return -1;
  // From field 3 on: state, ppid, …, utime (14), stime (15), cutime (16), cstime (17).
  if (parent != nullptr) *parent = static_cast<pid_t>(std::stol(f[1]));
  double ticks = std::stod(f[11]) + std::stod(f[12]);
  if (children) ticks += std::stod(f[13]) + std::stod(f[14]);
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Processor time of a benchmark's parts, in seconds since boot: the database server (its
// postmaster and every child, live or exited), one service process, this process (the client);
// and the whole machine's (/proc/stat, in clock ticks).
struct PartTimes {
  double database = 0;
  double service = 0;
  double client = 0;
  CpuTimes machine;
};

// `postmaster` and `service` are pids (the postmaster's: the parent of any backend, from
// pg_backend_pid()).
inline PartTimes ReadPartTimes(pid_t postmaster, pid_t service) {
  PartTimes t;
  // The postmaster with its reaped children, and its live children: a backend that exits
  // between two readings moves from the second sum to the first, and is counted once (one that
  // exits during a reading, between the two sums, is missed by it: the benchmarks keep their
  // connections open through their phases).
  t.database = std::max(0.0, ProcessCpuSeconds(postmaster, /*children=*/true));
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t parent = 0;
    const double seconds = ProcessCpuSeconds(static_cast<pid_t>(std::stol(name)), false, &parent);
    if (seconds > 0 && parent == postmaster) t.database += seconds;
  }
  t.service = std::max(0.0, ProcessCpuSeconds(service));
  t.client = std::max(0.0, ProcessCpuSeconds(getpid()));
  t.machine = ReadCpuTimes();
  return t;
}

// Processor time per call over a phase of `calls` calls, in microseconds: of each part, and of
// the whole machine (busy).
struct PerCallTimes {
  double database = 0;
  double service = 0;
  double client = 0;
  double machine = 0;
};

inline PerCallTimes PerCall(const PartTimes& before, const PartTimes& after, double calls) {
  if (calls <= 0) return {};
  const double us = 1e6 / calls;
  const double machine_seconds =
      (after.machine.busy - before.machine.busy) / static_cast<double>(sysconf(_SC_CLK_TCK));
  return {(after.database - before.database) * us, (after.service - before.service) * us,
          (after.client - before.client) * us, machine_seconds * us};
}

}  // namespace peerpath::testing
