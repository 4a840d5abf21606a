#pragma once

// The peer relationship as another service keeps it (DESIGN.md section 3): a local
// `supporter_matches` table in the consuming service's own schema, fed from the matching
// service's events (MatchStartedEvent, MatchEndedEvent, SupporterSupervisionChangedEvent), so
// object-level rules ("a peer supporter only for their active matches", "a supervisor only for
// the participants of the supporters they supervise") are decided locally, in the caller's
// transaction. The consuming service's migrations create the table:
//
//   supporter_matches (agency_id text, match_id uuid, supporter_id uuid, supporter_subject text,
//                      participant_id text, active boolean DEFAULT true, started_at timestamptz,
//                      ended_at timestamptz, supervisor_subject text NOT NULL DEFAULT '',
//                      PRIMARY KEY (agency_id, match_id))
//
// with the indexes of services/checkin/migrations/0002 and 0003.

#include <optional>
#include <pqxx/pqxx>
#include <string>

#include "absl/status/status.h"
#include "peerpath/common/v1/common.pb.h"

namespace peerpath {

// Applies one event of the matching log (other types are ignored); idempotent. Inside the
// consumer's transaction, scoped to the event's agency.
absl::Status ApplySupporterMatchEvent(pqxx::work& tx, const common::v1::Event& event);

// The participant's active peer supporter, if any (the latest started when several).
struct ActiveSupporter {
  std::string supporter_id;
  std::string subject;
  std::string supervisor_subject;  // The supporter's supervisor; empty when none is known.
};
std::optional<ActiveSupporter> ActiveSupporterOf(pqxx::work& tx, const std::string& participant_id);

// True when `subject` is one of the participant's active peer supporters.
bool IsActiveSupporter(pqxx::work& tx, const std::string& subject,
                       const std::string& participant_id);

// True when `subject` supervises the supporter of one of the participant's active matches.
bool IsSupervisingSupporterOf(pqxx::work& tx, const std::string& subject,
                              const std::string& participant_id);

}  // namespace peerpath
