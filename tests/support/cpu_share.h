#pragma once

// The share of the machine's processor time a benchmark phase keeps busy, read from /proc/stat,
// for the benchmarks' bound from processor time alone: when a call needs parts A and B, each
// measured alone at rate r and busy share u, no implementation on this machine exceeds
// 1 / (u_A / r_A + u_B / r_B) calls per second.

#include <fstream>
#include <functional>
#include <string>

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

// The share of the available processor time that `phase` kept busy, 0 to 1 (0 when /proc/stat
// cannot be read).
inline double CpuShare(const std::function<void()>& phase) {
  const CpuTimes before = ReadCpuTimes();
  phase();
  const CpuTimes after = ReadCpuTimes();
  const double available = after.available - before.available;
  return available > 0 ? (after.busy - before.busy) / available : 0.0;
}

// 1 / (share_a / rate_a + share_b / rate_b): the most calls per second this machine's processors
// allow when each call needs one of part A and one of part B; 0 when a figure is missing.
inline double BoundFromCpu(double rate_a, double share_a, double rate_b, double share_b) {
  if (rate_a <= 0 || rate_b <= 0 || share_a <= 0 || share_b <= 0) return 0.0;
  return 1.0 / (share_a / rate_a + share_b / rate_b);
}

}  // namespace peerpath::testing
