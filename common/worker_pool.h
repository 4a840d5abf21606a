#pragma once

// A fixed set of threads that run posted work in order of posting: callback-API handlers hand
// their blocking part (a database call) to it so that gRPC's own threads never wait on
// PostgreSQL.

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace peerpath {

class WorkerPool {
 public:
  explicit WorkerPool(int threads);
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;
  // Runs everything already posted, then joins the threads.
  ~WorkerPool();

  void Post(std::function<void()> work);

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace peerpath
