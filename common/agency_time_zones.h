#pragma once

// The agency's time zone as another service learns it from the check-in log
// (ProgramPolicyChangedEvent, and the zone an EnrollmentStartedEvent carries): a local
// `agency_time_zones` table in the consuming service's own schema, keyed by agency, with the log
// position that named the zone so an older event delivered late never brings an old zone back.
// The consuming service's migrations create the table:
//
//   agency_time_zones (agency_id text PRIMARY KEY, time_zone text NOT NULL, position bigint)
//
// (evaluation 0005, escalation 0008).

#include <cstdint>
#include <pqxx/pqxx>
#include <string>

namespace peerpath {

// A zone name this build's tz database knows (not empty, at most 64 characters).
bool IsTimeZoneName(const std::string& name);

// Stores `zone` (a checked IsTimeZoneName) as the agency's from log `position` on, unless a
// later position named one already. True when stored.
bool NoteAgencyTimeZone(pqxx::work& tx, const std::string& agency_id, const std::string& zone,
                        int64_t position);

}  // namespace peerpath
