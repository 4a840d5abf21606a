#pragma once

// A minimal HTTP/1.1 server on 127.0.0.1 for webhook tests: answers the first `failures`
// requests with 503, then 200; records every accepted request body. Port 0 picks a free one.
// Each connection is served on a thread of its own, answering after `delay_ms`; the most
// requests it held at once shows whether a client sent them concurrently.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace peerpath::testing {

class LocalHttpServer {
 public:
  explicit LocalHttpServer(int failures, int port = 0, int delay_ms = 0)
      : failures_(failures), delay_ms_(delay_ms) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    const int yes = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    listen(fd_, 16);
    thread_ = std::thread([this] { Serve(); });
  }
  ~LocalHttpServer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    thread_.join();
    for (auto& handler : handlers_) handler.join();
  }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/page"; }
  std::vector<std::string> bodies() {
    std::lock_guard<std::mutex> lock(mu_);
    return bodies_;
  }
  int requests() const { return requests_; }
  int most_at_once() const { return most_at_once_; }

 private:
  void Serve() {
    while (!stop_) {
      int client = accept(fd_, nullptr, nullptr);
      if (client < 0) return;
      handlers_.emplace_back([this, client] { Answer(client); });
    }
  }

  void Answer(int client) {
    {
      const int now = ++at_once_;
      int most = most_at_once_.load();
      while (now > most && !most_at_once_.compare_exchange_weak(most, now)) {
      }
    }
    std::string data;
    char buffer[4096];
    size_t body_start = std::string::npos;
    size_t length = 0;
    while (true) {
      ssize_t n = read(client, buffer, sizeof(buffer));
      if (n <= 0) break;
      data.append(buffer, static_cast<size_t>(n));
      if (body_start == std::string::npos) {
        body_start = data.find("\r\n\r\n");
        if (body_start != std::string::npos) {
          body_start += 4;
          auto pos = data.find("Content-Length: ");
          if (pos != std::string::npos) length = std::stoul(data.substr(pos + 16));
        }
      }
      if (body_start != std::string::npos && data.size() >= body_start + length) break;
    }
    const bool fail = requests_++ < failures_;
    if (!fail && body_start != std::string::npos) {
      std::lock_guard<std::mutex> lock(mu_);
      bodies_.push_back(data.substr(body_start, length));
    }
    const std::string response = fail ? "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n"
                                        "Connection: close\r\n\r\n"
                                      : "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                        "Connection: close\r\n\r\n";
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    (void)!write(client, response.data(), response.size());
    close(client);
    --at_once_;
  }

  int fd_ = -1;
  int port_ = 0;
  const int failures_;
  const int delay_ms_;
  std::atomic<int> requests_{0};
  std::atomic<int> at_once_{0};
  std::atomic<int> most_at_once_{0};
  std::vector<std::thread> handlers_;  // Only the accepting thread adds; joined at destruction.
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::string> bodies_;
  std::thread thread_;
};

}  // namespace peerpath::testing
