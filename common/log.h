#pragma once

// Structured logging: one JSON object per line on stderr.
//
// Log lines carry ids and codes, never personal data: no names, free text, answers or contact
// details of participants. Callers pass fields explicitly so a reviewer can see what is logged.

#include <nlohmann/json.hpp>
#include <string_view>

namespace peerpath::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Sets the `service` field of every line and the minimum level. Called once at start-up.
void Configure(std::string_view service, Level min_level);

// Parses "debug", "info", "warn" or "error".
bool ParseLevel(std::string_view text, Level* level);

void Write(Level level, std::string_view message, nlohmann::json fields = nlohmann::json::object());

// Whether a line of `level` would be written: lets a hot path skip building its fields.
bool Enabled(Level level);

inline void Debug(std::string_view m, nlohmann::json f = nlohmann::json::object()) {
  Write(Level::kDebug, m, std::move(f));
}
inline void Info(std::string_view m, nlohmann::json f = nlohmann::json::object()) {
  Write(Level::kInfo, m, std::move(f));
}
inline void Warn(std::string_view m, nlohmann::json f = nlohmann::json::object()) {
  Write(Level::kWarn, m, std::move(f));
}
inline void Error(std::string_view m, nlohmann::json f = nlohmann::json::object()) {
  Write(Level::kError, m, std::move(f));
}

}  // namespace peerpath::log
