#pragma once

// Errors inside PeerPath are absl::Status; they become grpc::Status once, at the edge (ToGrpc).
//
// Validation failures carry every bad field as a google.rpc.BadRequest in the status details, so
// a client can show the user exactly what to fix.

#include <grpcpp/support/status.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace peerpath {

struct FieldViolation {
  std::string field;        // Path of the field in the request, e.g. "answers.wellbeing".
  std::string description;  // What is wrong and, where useful, what is allowed.
};

// INVALID_ARGUMENT with one google.rpc.BadRequest field violation per entry.
absl::Status InvalidArgument(absl::string_view message,
                             const std::vector<FieldViolation>& violations);

// The field violations carried by `status` (empty if none).
std::vector<FieldViolation> FieldViolations(const absl::Status& status);

// Converts at the gRPC edge: code and message are kept and details become a google.rpc.Status in
// the grpc-status-details-bin trailer.
grpc::Status ToGrpc(const absl::Status& status);

// The canonical upper-case name of a gRPC code ("OK", "INVALID_ARGUMENT", ...), as used in
// metrics labels and logs.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace peerpath
