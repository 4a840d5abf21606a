#pragma once
// Reading stored JSON back into protobuf messages quickly. Services keep some messages as JSON
// columns (matching's hard constraints and preferences, match explanations): readable in SQL, and
// read back by the thousand when a batch loads. protobuf's JsonStringToMessage builds a type
// resolver's view of the message and a binary copy on every call (some 15 µs for a small
// message); this reads the JSON with nlohmann::json and sets the fields by reflection instead.

#include <google/protobuf/message.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace peerpath {

// Fills `message` (cleared first) from `json` exactly as JsonStringToMessage with
// ignore_unknown_fields would: fields by proto name or JSON name, enums by name or number,
// null as unset, unknown fields and unknown enum names ignored. What it does not read itself
// (maps, well-known types, 64-bit integers as strings, bytes, NaN and infinities…) it hands to
// JsonStringToMessage, so the result never differs. INVALID_ARGUMENT when the JSON is malformed
// or does not fit the message.
absl::Status ParseJsonMessage(absl::string_view json, google::protobuf::Message* message);

}  // namespace peerpath
