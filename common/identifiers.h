#pragma once

// Shapes of identifiers more than one service checks, so producer and consumer agree.

#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"

namespace peerpath {

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
