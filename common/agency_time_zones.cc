#include "common/agency_time_zones.h"

#include "absl/time/time.h"
#include "common/db.h"

namespace peerpath {

bool IsTimeZoneName(const std::string& name) {
  absl::TimeZone zone;
  return !name.empty() && name.size() <= 64 && absl::LoadTimeZone(name, &zone);
}

bool NoteAgencyTimeZone(pqxx::work& tx, const std::string& agency_id, const std::string& zone,
                        int64_t position) {
  return !ExecPrepared(tx, "peerpath_note_agency_time_zone",
                       "INSERT INTO agency_time_zones (agency_id, time_zone, position) "
                       "VALUES ($1, $2, $3) ON CONFLICT (agency_id) DO UPDATE SET "
                       "time_zone = EXCLUDED.time_zone, position = EXCLUDED.position "
                       "WHERE agency_time_zones.position <= EXCLUDED.position RETURNING 1",
                       agency_id, zone, position)
              .empty();
}

}  // namespace peerpath
