#pragma once

// A one-way "the process is stopping" flag that background loops and long-lived streams wait on,
// so shutdown never waits for a poll interval or a stream that would never end by itself.

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/time/time.h"

namespace peerpath {

class StopSignal {
 public:
  void Notify() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
    }
    cv_.notify_all();
  }

  bool stopped() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stopped_;
  }

  // Sleeps up to `d`; returns true when stopped (at once if already stopped).
  bool WaitFor(absl::Duration d) const {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(d), [this] { return stopped_; });
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool stopped_ = false;
};

// A "look now" nudge for a background loop that otherwise polls: Wake() from any thread (after a
// commit that left work for it), Stop() when its owner goes. The loop sleeps in WaitForWake.
class WakeSignal {
 public:
  // Wakes the loop only when it waits for a wake and none is pending: during its settle, or
  // while it works, the wake is only recorded (each wake-up is a context switch, and a busy
  // service calls Wake() after every commit).
  void Wake() {
    bool notify = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      notify = waiting_ && !woken_;
      woken_ = true;
    }
    if (notify) cv_.notify_all();
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
    }
    cv_.notify_all();
  }

  // Sleeps `settle` whatever wakes come (so a burst of them shares one pass), then up to `poll`
  // or until woken; the wake is consumed. Returns false when stopped.
  bool WaitForWake(absl::Duration poll, absl::Duration settle = absl::ZeroDuration()) {
    std::unique_lock<std::mutex> lock(mu_);
    if (settle > absl::ZeroDuration()) {
      const auto settled = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(settle);
      while (!stopped_ && cv_.wait_until(lock, settled) == std::cv_status::no_timeout) {
        if (!stopped_) ++idle_wakeups_;
      }
    }
    waiting_ = true;
    cv_.wait_for(lock, absl::ToChronoNanoseconds(poll), [this] { return woken_ || stopped_; });
    waiting_ = false;
    woken_ = false;
    return !stopped_;
  }

  // Times the loop woke during a settle for nothing (neither stopped nor its time up).
  long IdleWakeups() const {
    std::lock_guard<std::mutex> lock(mu_);
    return idle_wakeups_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
  bool waiting_ = false;  // In WaitForWake's wait for a wake (after the settle).
  bool stopped_ = false;
  long idle_wakeups_ = 0;
};

}  // namespace peerpath
