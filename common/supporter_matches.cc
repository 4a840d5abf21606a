#include "common/supporter_matches.h"

#include "absl/strings/str_cat.h"
#include "common/db.h"
#include "common/time_util.h"
#include "peerpath/matching/v1/events.pb.h"

namespace peerpath {
namespace {

// A microseconds parameter as timestamptz; '' is NULL.
#define PP_TS(p) "to_timestamp(NULLIF(" p ", '')::int8 / 1000000.0)"

std::string MicrosOr(const google::protobuf::Timestamp& ts,
                     const google::protobuf::Timestamp& or_ts, bool has) {
  return absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(has ? ts : or_ts)));
}

}  // namespace

absl::Status ApplySupporterMatchEvent(pqxx::work& tx, const common::v1::Event& event) {
  if (event.payload().Is<matching::v1::MatchStartedEvent>()) {
    matching::v1::MatchStartedEvent started;
    if (!event.payload().UnpackTo(&started) || started.match_id().empty() ||
        started.supporter_subject().empty() || started.participant_id().empty()) {
      return absl::InvalidArgumentError("unreadable MatchStartedEvent");
    }
    tx.exec_params0(
        "INSERT INTO supporter_matches (agency_id, match_id, supporter_id, supporter_subject, "
        "participant_id, started_at, supervisor_subject) VALUES ($1, $2::uuid, $3::uuid, $4, $5, "
        "" PP_TS("$6") ", $7) ON CONFLICT (agency_id, match_id) DO NOTHING",
        event.agency_id(), started.match_id(), started.supporter_id(), started.supporter_subject(),
        started.participant_id(),
        MicrosOr(started.started_at(), event.occurred_at(), started.has_started_at()),
        started.supervisor_subject());
  } else if (event.payload().Is<matching::v1::SupporterSupervisionChangedEvent>()) {
    matching::v1::SupporterSupervisionChangedEvent supervision;
    if (!event.payload().UnpackTo(&supervision) || supervision.supporter_id().empty()) {
      return absl::InvalidArgumentError("unreadable SupporterSupervisionChangedEvent");
    }
    // Events of one log arrive in order: matches started later already carry the new one.
    tx.exec_params0(
        "UPDATE supporter_matches SET supervisor_subject = $2 WHERE supporter_id = $1::uuid",
        supervision.supporter_id(), supervision.supervisor_subject());
  } else if (event.payload().Is<matching::v1::MatchEndedEvent>()) {
    matching::v1::MatchEndedEvent ended;
    if (!event.payload().UnpackTo(&ended) || ended.match_id().empty() ||
        ended.supporter_subject().empty() || ended.participant_id().empty()) {
      return absl::InvalidArgumentError("unreadable MatchEndedEvent");
    }
    // An end seen before its start (never in one ordered log) still records the ended match.
    tx.exec_params0(
        "INSERT INTO supporter_matches (agency_id, match_id, supporter_id, supporter_subject, "
        "participant_id, active, ended_at) VALUES ($1, $2::uuid, $3::uuid, $4, $5, false, "
        "coalesce(" PP_TS("$6") ", now())) ON CONFLICT (agency_id, match_id) DO UPDATE SET "
        "active = false, ended_at = EXCLUDED.ended_at",
        event.agency_id(), ended.match_id(), ended.supporter_id(), ended.supporter_subject(),
        ended.participant_id(),
        ended.has_ended_at()
            ? absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(ended.ended_at())))
            : std::string());
  }
  return absl::OkStatus();
}

std::optional<ActiveSupporter> ActiveSupporterOf(pqxx::work& tx,
                                                 const std::string& participant_id) {
  const pqxx::result r = ExecPrepared(
      tx, "supporter_matches_active_supporter_of",
      "SELECT supporter_id::text, supporter_subject, supervisor_subject FROM supporter_matches "
      "WHERE participant_id = $1 AND active ORDER BY started_at DESC NULLS LAST LIMIT 1",
      participant_id);
  if (r.empty()) return std::nullopt;
  return ActiveSupporter{r[0][0].c_str(), r[0][1].c_str(), r[0][2].c_str()};
}

bool IsActiveSupporter(pqxx::work& tx, const std::string& subject,
                       const std::string& participant_id) {
  return !subject.empty() && !ExecPrepared(tx, "supporter_matches_is_active_supporter",
                                           "SELECT 1 FROM supporter_matches WHERE participant_id "
                                           "= $1 AND supporter_subject = $2 AND active LIMIT 1",
                                           participant_id, subject)
                                  .empty();
}

bool IsSupervisingSupporterOf(pqxx::work& tx, const std::string& subject,
                              const std::string& participant_id) {
  return !subject.empty() && !ExecPrepared(tx, "supporter_matches_is_supervising",
                                           "SELECT 1 FROM supporter_matches WHERE participant_id "
                                           "= $1 AND supervisor_subject = $2 AND active LIMIT 1",
                                           participant_id, subject)
                                  .empty();
}

}  // namespace peerpath
