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

}  // namespace peerpath
