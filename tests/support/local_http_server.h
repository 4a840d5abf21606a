#pragma once

// A minimal HTTP/1.1 server on 127.0.0.1 for webhook tests: answers the first `failures`
// requests with 503, then 200; records every accepted request body. Port 0 picks a free one.
// Each connection is served on a thread of its own, answering after `delay_ms` and keeping the
// connection open for the next request (HTTP/1.1 keep-alive) until the client closes it; the
// most requests it held at once shows whether a client sent them concurrently, and the
// connections it accepted whether a client reused them.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
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
    {
      // A kept-alive connection's handler waits in read(): wake it.
      std::lock_guard<std::mutex> lock(mu_);
      for (int client : clients_) shutdown(client, SHUT_RDWR);
    }
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
  int connections() const { return connections_; }

 private:
  void Serve() {
    while (!stop_) {
      int client = accept(fd_, nullptr, nullptr);
      if (client < 0) return;
      ++connections_;
      {
        std::lock_guard<std::mutex> lock(mu_);
        clients_.push_back(client);
      }
      handlers_.emplace_back([this, client] { Answer(client); });
    }
  }

  // Serves the connection's requests one after another until the client closes it (or the
  // server stops); `data` keeps what was read past the current request.
  void Answer(int client) {
    std::string data;
    char buffer[4096];
    while (!stop_) {
      size_t body_start = std::string::npos;
      size_t length = 0;
      while (body_start == std::string::npos || data.size() < body_start + length) {
        if (body_start == std::string::npos) {
          body_start = data.find("\r\n\r\n");
          if (body_start != std::string::npos) {
            body_start += 4;
            auto pos = data.find("Content-Length: ");
            if (pos != std::string::npos && pos < body_start) {
              length = std::stoul(data.substr(pos + 16));
            }
            continue;
          }
        }
        const ssize_t n = read(client, buffer, sizeof(buffer));
        if (n <= 0) return Close(client);
        data.append(buffer, static_cast<size_t>(n));
      }
      {
        const int now = ++at_once_;
        int most = most_at_once_.load();
        while (now > most && !most_at_once_.compare_exchange_weak(most, now)) {
        }
      }
      const bool fail = requests_++ < failures_;
      if (!fail) {
        std::lock_guard<std::mutex> lock(mu_);
        bodies_.push_back(data.substr(body_start, length));
      }
      data.erase(0, body_start + length);
      const std::string response = fail ? "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n"
                                        : "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
      if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
      (void)!write(client, response.data(), response.size());
      --at_once_;
    }
    Close(client);
  }

  // Forgotten before it is closed, so that the destructor never shuts down a number reused.
  void Close(int client) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      clients_.erase(std::remove(clients_.begin(), clients_.end(), client), clients_.end());
    }
    close(client);
  }

  int fd_ = -1;
  int port_ = 0;
  const int failures_;
  const int delay_ms_;
  std::atomic<int> requests_{0};
  std::atomic<int> at_once_{0};
  std::atomic<int> most_at_once_{0};
  std::atomic<int> connections_{0};
  std::vector<int> clients_;           // Guarded by mu_.
  std::vector<std::thread> handlers_;  // Only the accepting thread adds; joined at destruction.
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::string> bodies_;
  std::thread thread_;
};

}  // namespace peerpath::testing
