#pragma once

// Shapes of identifiers more than one service checks, so producer and consumer agree.

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

// An agency's program id (check-in enrollments, evaluation report scopes): 1 to 64 characters of
// [A-Za-z0-9_.:-].
inline bool IsProgramId(absl::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char ch : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) &&
        absl::string_view("_.:-").find(ch) == absl::string_view::npos) {
      return false;
    }
  }
  return true;
}

}  // namespace peerpath
