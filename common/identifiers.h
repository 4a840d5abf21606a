#pragma once

// Shapes of identifiers more than one service checks, so producer and consumer agree.

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"

namespace peerpath {

// A UUID in its canonical text form (8-4-4-4-12 hex digits, either case).
inline bool IsUuid(absl::string_view text) {
  if (text.size() != 36) return false;
  for (size_t i = 0; i < text.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? text[i] != '-' : !absl::ascii_isxdigit(static_cast<unsigned char>(text[i]))) {
      return false;
    }
  }
  return true;
}

// A random (version 4) UUID in canonical lowercase form, from OpenSSL's CSPRNG.
std::string RandomUuid();

// `min` to `max` characters, each an ASCII letter or digit or one of `extra`.
inline bool IsWordOf(absl::string_view text, size_t min, size_t max, absl::string_view extra) {
  if (text.size() < min || text.size() > max) return false;
  for (char ch : text) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) &&
        extra.find(ch) == absl::string_view::npos) {
      return false;
    }
  }
  return true;
}

// An agency's program id (check-in enrollments, evaluation report scopes): 1 to 64 characters of
// [A-Za-z0-9_.:-].
inline bool IsProgramId(absl::string_view id) { return IsWordOf(id, 1, 64, "_.:-"); }

}  // namespace peerpath
