#pragma once

// List RPCs follow AIP-158: page_size 0 means the default, values above the maximum are clamped,
// negative values are INVALID_ARGUMENT; page tokens are opaque to clients.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace peerpath {

struct PageSizeLimits {
  int default_size = 50;
  int max_size = 500;
};

// Returns the effective page size, or INVALID_ARGUMENT naming `page_size` when negative.
absl::StatusOr<int> ResolvePageSize(int requested, PageSizeLimits limits = {});

// Wraps a cursor (e.g. the last key returned) into an opaque token bound to one list, so a token
// from ListConsents is refused by ListDisclosures.
std::string EncodePageToken(absl::string_view list_name, absl::string_view cursor);

// Unwraps a token made by EncodePageToken for the same list. An empty token yields an empty
// cursor (first page). Anything else is INVALID_ARGUMENT naming `page_token`.
absl::StatusOr<std::string> DecodePageToken(absl::string_view list_name, absl::string_view token);

}  // namespace peerpath
