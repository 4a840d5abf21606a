#pragma once

// A one-way "the process is stopping" flag that background loops and long-lived streams wait on,
// so shutdown never waits for a poll interval or a stream that would never end by itself.

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
  void Wake() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      woken_ = true;
    }
    cv_.notify_all();
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
      cv_.wait_for(lock, absl::ToChronoNanoseconds(settle), [this] { return stopped_; });
    }
    cv_.wait_for(lock, absl::ToChronoNanoseconds(poll), [this] { return woken_ || stopped_; });
    woken_ = false;
    return !stopped_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
  bool stopped_ = false;
};

}  // namespace peerpath
