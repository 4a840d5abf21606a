#include "services/escalation/store.h"

#include <array>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/agency_time_zones.h"
#include "common/db.h"
#include "common/identifiers.h"
#include "common/time_util.h"
#include "services/escalation/policy_codec.h"

namespace peerpath::escalation {
namespace {

template <typename Enum>
using Codes = std::vector<std::pair<Enum, const char*>>;

const Codes<Category>& CategoryCodes() {
  static const auto* codes =
      new Codes<Category>{{common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY, "immediate_safety"},
                          {common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING, "clinical_worsening"},
                          {common::v1::CONCERN_CATEGORY_BASIC_NEEDS, "housing_or_basic_needs"},
                          {common::v1::CONCERN_CATEGORY_DISENGAGEMENT, "disengagement"},
                          {common::v1::CONCERN_CATEGORY_ROLE_BOUNDARY, "role_boundary"},
                          {common::v1::CONCERN_CATEGORY_SUPPORTER_WELLBEING, "supporter_wellbeing"},
                          {common::v1::CONCERN_CATEGORY_WELLBEING_DECLINE, "wellbeing_decline"}};
  return *codes;
}
const Codes<Severity>& SeverityCodes() {
  static const auto* codes =
      new Codes<Severity>{{common::v1::CONCERN_SEVERITY_ROUTINE, "routine"},
                          {common::v1::CONCERN_SEVERITY_URGENT, "urgent"},
                          {common::v1::CONCERN_SEVERITY_CRITICAL, "critical"}};
  return *codes;
}
const Codes<v1::ConcernSource>& SourceCodes() {
  static const auto* codes =
      new Codes<v1::ConcernSource>{{v1::CONCERN_SOURCE_CHECK_IN_RULE, "check_in_rule"},
                                   {v1::CONCERN_SOURCE_MANUAL, "manual"},
                                   {v1::CONCERN_SOURCE_MISSED_CONTACT, "missed_contact"},
                                   {v1::CONCERN_SOURCE_WELLBEING_TREND, "wellbeing_trend"},
                                   {v1::CONCERN_SOURCE_MISSED_APPOINTMENT, "missed_appointment"}};
  return *codes;
}
const Codes<v1::ConcernState>& StateCodes() {
  static const auto* codes =
      new Codes<v1::ConcernState>{{v1::CONCERN_STATE_OPEN, "open"},
                                  {v1::CONCERN_STATE_ACKNOWLEDGED, "acknowledged"},
                                  {v1::CONCERN_STATE_RESOLVED, "resolved"},
                                  {v1::CONCERN_STATE_CANCELLED, "cancelled"}};
  return *codes;
}
const Codes<TargetKind>& TargetKindCodes() {
  static const auto* codes =
      new Codes<TargetKind>{{v1::TARGET_KIND_CLINICAL_ON_CALL, "clinical_on_call"},
                            {v1::TARGET_KIND_RECEIVING_CLINICIAN, "receiving_clinician"},
                            {v1::TARGET_KIND_CASE_MANAGEMENT_TEAM, "case_management_team"},
                            {v1::TARGET_KIND_SUPPORTER_SUPERVISOR, "supervisor"}};
  return *codes;
}
const Codes<v1::ConcernOutcome>& OutcomeCodes() {
  static const auto* codes = new Codes<v1::ConcernOutcome>{
      {v1::CONCERN_OUTCOME_CLINICAL_REVIEW_DONE, "clinical_review_done"},
      {v1::CONCERN_OUTCOME_REFERRED, "referred"},
      {v1::CONCERN_OUTCOME_NO_ACTION_NEEDED, "no_action_needed"},
      {v1::CONCERN_OUTCOME_PARTICIPANT_SAFE, "participant_safe"},
      {v1::CONCERN_OUTCOME_OTHER, "other"}};
  return *codes;
}
const Codes<v1::DeadlineKind>& DeadlineKindCodes() {
  static const auto* codes = new Codes<v1::DeadlineKind>{
      {v1::DEADLINE_KIND_ACKNOWLEDGEMENT, "acknowledgement"},
      {v1::DEADLINE_KIND_RESOLUTION, "resolution"},
      {v1::DEADLINE_KIND_RESOLUTION_AFTER_REALERT, "resolution_after_realert"}};
  return *codes;
}
const Codes<v1::TransitionKind>& TransitionCodes() {
  static const auto* codes =
      new Codes<v1::TransitionKind>{{v1::TRANSITION_KIND_OPENED, "opened"},
                                    {v1::TRANSITION_KIND_ROUTED, "routed"},
                                    {v1::TRANSITION_KIND_ACKNOWLEDGED, "acknowledged"},
                                    {v1::TRANSITION_KIND_REALERTED, "realerted"},
                                    {v1::TRANSITION_KIND_ESCALATED, "escalated"},
                                    {v1::TRANSITION_KIND_RESOLVED, "resolved"},
                                    {v1::TRANSITION_KIND_CANCELLED, "cancelled"}};
  return *codes;
}

template <typename Enum>
std::string ToCode(const Codes<Enum>& codes, Enum value) {
  for (const auto& [e, code] : codes) {
    if (e == value) return code;
  }
  return "";
}
template <typename Enum>
Enum FromCode(const Codes<Enum>& codes, const std::string& code) {
  for (const auto& [e, c] : codes) {
    if (code == c) return e;
  }
  return static_cast<Enum>(0);
}

int64_t Micros(absl::Time t) { return t == absl::Time() ? 0 : absl::ToUnixMicros(t); }
absl::Time FromMicros(int64_t us) { return us == 0 ? absl::Time() : absl::FromUnixMicros(us); }
void SetTime(int64_t us, google::protobuf::Timestamp* ts) {
  if (us != 0) *ts = ToProtoTimestamp(absl::FromUnixMicros(us));
}
int64_t ProtoMicros(const v1::Concern& c, const google::protobuf::Timestamp& ts, bool has) {
  (void)c;
  return has ? absl::ToUnixMicros(FromProtoTimestamp(ts)) : 0;
}

// The columns ConcernFromRow reads, in order; $2 team kinds (text[]) and $3 subject of the viewer.
constexpr char kConcernColumns[] = R"sql(
  c.id::text, c.agency_id, c.participant_id, coalesce(c.enrollment_id::text, ''), c.category,
  c.severity, c.source, coalesce(c.source_event_id, ''), coalesce(c.source_check_in_id::text, ''),
  coalesce(c.description, ''), c.raised_by, c.raised_by_role, c.status, c.current_level,
  c.target_kind, c.target_id, c.policy_id::text, c.policy_version, us_from_ts(c.opened_at),
  us_from_ts(c.ack_deadline), us_from_ts(c.resolve_deadline), us_from_ts(c.next_deadline),
  coalesce(c.next_deadline_kind, ''), us_from_ts(c.notify_at), c.breach_count,
  us_from_ts(c.acknowledged_at), coalesce(c.acknowledged_by, ''), coalesce(c.acknowledged_level, -1),
  us_from_ts(c.resolved_at), coalesce(c.resolved_by, ''), coalesce(c.outcome, ''),
  us_from_ts(c.cancelled_at), coalesce(c.cancelled_by, ''), coalesce(c.cancel_reason, ''),
  c.revision)sql";

// The target kinds of teams (whoever acts for the team may act) and of named people (the target
// id is their subject). Migration 0017's concern_transitions_to_person is partial on the person
// kinds, and its predicate names them again: a query finds it only when it names the same ones.
constexpr std::array<const char*, 2> kTeamTargetKinds = {"clinical_on_call",
                                                         "case_management_team"};
constexpr std::array<const char*, 2> kPersonTargetKinds = {"receiving_clinician", "supervisor"};

// `kinds` as a list of SQL literals: 'a', 'b'.
std::string SqlList(const std::array<const char*, 2>& kinds) {
  return absl::StrJoin(kinds, ", ", [](std::string* out, const char* kind) {
    absl::StrAppend(out, "'", kind, "'");
  });
}

// Whether the viewer acts for a team: their team kinds name one of kTeamTargetKinds.
bool ActsForATeam(const Viewer& viewer) {
  for (const std::string& kind : viewer.team_kinds) {
    if (absl::c_linear_search(kTeamTargetKinds, kind)) return true;
  }
  return false;
}

// Whether the viewer sees the concern in full ($2 team kinds, $3 subject): it is or was routed to
// them, or (for a supervisor, kSupervisedSupporters in $2) it concerns one of their supporters:
// raised by a supporter they supervise, or about a participant in such a supporter's active
// match (supporter_matches, kept from the matching log).
// Routed to the viewer's team is looked up concern by concern (OFFSET 0 keeps PostgreSQL from
// hashing it): a team sees most of its agency's concerns, so a page of them is read from
// concerns_listed after a few lookups each, where a hashed subplan first read every transition of
// the agency (240 ms with 330,000 of them). A viewer with no team kind (a supervisor) skips it.
const std::string& RoutedToViewer() {
  static const std::string* const sql = new std::string(
      absl::StrCat("(($2::text[] && ARRAY[", SqlList(kTeamTargetKinds), R"sql(] AND EXISTS (
      SELECT 1 FROM concern_transitions t
      WHERE t.agency_id = c.agency_id AND t.concern_id = c.id AND t.target_kind = ANY ($2::text[])
      OFFSET 0))
   OR EXISTS (SELECT 1 FROM concern_transitions t
              WHERE t.agency_id = c.agency_id AND t.concern_id = c.id
                AND t.target_kind IN ()sql",
                   SqlList(kPersonTargetKinds), R"sql() AND t.target_id = $3)
   OR ('supervised_supporters' = ANY ($2::text[]) AND EXISTS (
         SELECT 1 FROM supporter_matches m
         WHERE m.agency_id = c.agency_id AND m.supervisor_subject = $3
           AND (m.supporter_subject = c.raised_by
                OR (m.active AND m.participant_id = c.participant_id))))))sql"));
  return *sql;
}

ConcernRecord ConcernFromRow(const pqxx::row& row, bool with_viewer) {
  ConcernRecord record;
  v1::Concern& c = record.concern;
  int i = 0;
  c.set_concern_id(row[i++].as<std::string>());
  c.set_agency_id(row[i++].as<std::string>());
  c.set_participant_id(row[i++].as<std::string>());
  c.set_enrollment_id(row[i++].as<std::string>());
  c.set_category(FromCode(CategoryCodes(), row[i++].as<std::string>()));
  c.set_severity(FromCode(SeverityCodes(), row[i++].as<std::string>()));
  c.set_source(FromCode(SourceCodes(), row[i++].as<std::string>()));
  c.set_source_event_id(row[i++].as<std::string>());
  c.set_source_check_in_id(row[i++].as<std::string>());
  c.set_description(row[i++].as<std::string>());
  c.set_raised_by(row[i++].as<std::string>());
  c.set_raised_by_role(row[i++].as<std::string>());
  c.set_state(FromCode(StateCodes(), row[i++].as<std::string>()));
  c.set_current_level(row[i++].as<int>());
  c.mutable_current_target()->set_kind(FromCode(TargetKindCodes(), row[i++].as<std::string>()));
  c.mutable_current_target()->set_target_id(row[i++].as<std::string>());
  record.policy_id = row[i++].as<std::string>();
  c.set_policy_version(row[i++].as<int>());
  SetTime(row[i++].as<int64_t>(), c.mutable_opened_at());
  SetTime(row[i++].as<int64_t>(), c.mutable_ack_deadline());
  const int64_t resolve = row[i++].as<int64_t>();
  if (resolve) SetTime(resolve, c.mutable_resolution_deadline());
  const int64_t next = row[i++].as<int64_t>();
  if (next) SetTime(next, c.mutable_next_deadline());
  record.next_deadline_kind = row[i++].as<std::string>();
  record.notify_at = FromMicros(row[i++].as<int64_t>());
  c.set_breach_count(row[i++].as<int>());
  const int64_t acked = row[i++].as<int64_t>();
  if (acked) SetTime(acked, c.mutable_acknowledged_at());
  c.set_acknowledged_by(row[i++].as<std::string>());
  record.acknowledged_level = row[i++].as<int>();
  const int64_t resolved = row[i++].as<int64_t>();
  if (resolved) SetTime(resolved, c.mutable_resolved_at());
  c.set_resolved_by(row[i++].as<std::string>());
  c.set_outcome(FromCode(OutcomeCodes(), row[i++].as<std::string>()));
  const int64_t cancelled = row[i++].as<int64_t>();
  if (cancelled) SetTime(cancelled, c.mutable_cancelled_at());
  c.set_cancelled_by(row[i++].as<std::string>());
  c.set_cancel_reason(row[i++].as<std::string>());
  c.set_revision(row[i++].as<int>());
  if (with_viewer) record.routed_to_viewer = row[i++].as<bool>();
  return record;
}

absl::StatusOr<RoutingPolicy> PolicyFromRow(const pqxx::row& row) {
  auto policy = PolicyFromStored(row[2].as<std::string>(), row[3].as<std::string>(),
                                 row[4].as<std::string>(), row[5].as<std::string>());
  if (!policy.ok()) return policy.status();
  policy->policy_id = row[0].as<std::string>();
  policy->version = row[1].as<int>();
  policy->created_at = absl::FromUnixMicros(row[6].as<int64_t>());
  policy->created_by = row[7].as<std::string>();
  policy->time_zone_set_by_admin = row[8].as<bool>();
  return policy;
}

constexpr char kPolicyColumns[] =
    "id::text, version, rules::text, time_zone, business_hours::text, "
    "array_to_string(holidays, ','), us_from_ts(created_at), created_by, time_zone_set_by_admin";

// A stored policy never changes (an edit is a new version with a new id), so the parsed ones are
// kept by agency and id: routing a concern then reads one id, not the whole policy, and parses
// nothing. Bounded: emptied when it grows past kMaxPolicies.
class PolicyCache {
 public:
  std::optional<RoutingPolicy> Get(const std::string& agency_id, const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = policies_.find(Key(agency_id, id));
    if (it == policies_.end()) return std::nullopt;
    return it->second;
  }
  void Put(const std::string& agency_id, const RoutingPolicy& policy) {
    std::lock_guard<std::mutex> lock(mu_);
    if (policies_.size() >= kMaxPolicies) policies_.clear();
    policies_.emplace(Key(agency_id, policy.policy_id), policy);
  }

 private:
  static constexpr size_t kMaxPolicies = 4096;
  static std::string Key(const std::string& agency_id, const std::string& id) {
    return absl::StrCat(agency_id, "/", id);
  }
  std::mutex mu_;
  std::unordered_map<std::string, RoutingPolicy> policies_;
};

PolicyCache& Policies() {
  static PolicyCache* const cache = new PolicyCache;
  return *cache;
}

}  // namespace

std::string CategoryCode(Category category) { return ToCode(CategoryCodes(), category); }
std::string SeverityCode(Severity severity) { return ToCode(SeverityCodes(), severity); }
std::string SourceCode(v1::ConcernSource source) { return ToCode(SourceCodes(), source); }
std::string StateCode(v1::ConcernState state) { return ToCode(StateCodes(), state); }
std::string TargetKindCode(TargetKind kind) { return ToCode(TargetKindCodes(), kind); }
std::string OutcomeCode(v1::ConcernOutcome outcome) { return ToCode(OutcomeCodes(), outcome); }
std::string DeadlineKindCode(v1::DeadlineKind kind) { return ToCode(DeadlineKindCodes(), kind); }
v1::ConcernState StateFromCode(const std::string& code) { return FromCode(StateCodes(), code); }

absl::StatusOr<RoutingPolicy> Store::Policy(pqxx::work& tx, const std::string& agency_id,
                                            int version, const RoutingPolicy& default_policy) {
  const char* const latest =
      "SELECT id::text FROM routing_policies WHERE agency_id = $1 AND ($2 = 0 OR version = $2) "
      "ORDER BY version DESC LIMIT 1";
  pqxx::result rows = ExecPrepared(tx, "escalation_policy_latest", latest, agency_id, version);
  if (rows.empty() && version <= 1) {
    const StoredPolicyText stored = PolicyToStored(default_policy);
    tx.exec_params(
        // The zone the check-in log named for the agency, else the service's default.
        "INSERT INTO routing_policies (agency_id, version, rules, time_zone, business_hours, "
        "holidays, created_by) VALUES ($1, 1, $2::jsonb, coalesce((SELECT time_zone FROM "
        "agency_time_zones WHERE agency_id = $1), $3), $4::jsonb, $5::date[], "
        "'system:default') ON CONFLICT (agency_id, version) DO NOTHING",
        agency_id, stored.rules_json, default_policy.time_zone, stored.business_hours_json,
        stored.holidays);
    rows = ExecPrepared(tx, "escalation_policy_latest", latest, agency_id, version);
  }
  if (rows.empty()) {
    return absl::NotFoundError(absl::StrCat("routing policy version ", version, " not found"));
  }
  return PolicyById(tx, agency_id, rows[0][0].as<std::string>());
}

absl::StatusOr<RoutingPolicy> Store::PolicyById(pqxx::work& tx, const std::string& agency_id,
                                                const std::string& policy_id) {
  if (auto cached = Policies().Get(agency_id, policy_id)) return *std::move(cached);
  pqxx::result rows =
      tx.exec_params(absl::StrCat("SELECT ", kPolicyColumns,
                                  " FROM routing_policies WHERE agency_id = $1 AND id = $2::uuid"),
                     agency_id, policy_id);
  if (rows.empty()) return absl::InternalError("concern's routing policy missing");
  auto policy = PolicyFromRow(rows[0]);
  if (policy.ok()) Policies().Put(agency_id, *policy);
  return policy;
}

absl::StatusOr<RoutingPolicy> Store::InsertPolicy(pqxx::work& tx, const std::string& agency_id,
                                                  RoutingPolicy policy, int base_version,
                                                  const std::string& created_by) {
  const StoredPolicyText stored = PolicyToStored(policy);
  // Inserting base_version + 1 only when base_version is the newest: a concurrent edit makes
  // this insert nothing (or conflict on the unique version) and the caller gets ABORTED.
  pqxx::result rows = tx.exec_params(
      "INSERT INTO routing_policies (agency_id, version, rules, time_zone, business_hours, "
      "holidays, created_by, time_zone_set_by_admin) "
      "SELECT $1, $2 + 1, $3::jsonb, $4, $5::jsonb, $6::date[], $7, $8 "
      "WHERE $2 = (SELECT max(version) FROM routing_policies WHERE agency_id = $1) "
      "ON CONFLICT (agency_id, version) DO NOTHING "
      "RETURNING id::text, us_from_ts(created_at)",
      agency_id, base_version, stored.rules_json, policy.time_zone, stored.business_hours_json,
      stored.holidays, created_by, policy.time_zone_set_by_admin);
  if (rows.empty()) {
    return absl::AbortedError(absl::StrCat(
        "base_version ", base_version,
        " is no longer the current routing policy; read the current version and apply the "
        "change again"));
  }
  policy.policy_id = rows[0][0].as<std::string>();
  policy.created_at = absl::FromUnixMicros(rows[0][1].as<int64_t>());
  policy.version = base_version + 1;
  policy.created_by = created_by;
  return policy;
}

absl::Status Store::FollowAgencyTimeZone(pqxx::work& tx, const std::string& agency_id,
                                         const std::string& zone, int64_t position) {
  if (!IsTimeZoneName(zone)) {
    return absl::InvalidArgumentError("time_zone is not an IANA time zone");
  }
  // Not stored: a later position named the zone already.
  if (!NoteAgencyTimeZone(tx, agency_id, zone, position)) return absl::OkStatus();
  const pqxx::result latest = tx.exec_params(
      "SELECT id::text FROM routing_policies WHERE agency_id = $1 AND time_zone <> $2 AND NOT "
      "time_zone_set_by_admin AND version = (SELECT max(version) FROM routing_policies WHERE "
      "agency_id = $1)",
      agency_id, zone);
  // No policy yet (version 1 takes the zone when stored), an admin's zone, or the same zone.
  if (latest.empty()) return absl::OkStatus();
  auto current = PolicyById(tx, agency_id, latest[0][0].as<std::string>());
  if (!current.ok()) return current.status();
  RoutingPolicy next = *current;
  next.time_zone = zone;
  absl::LoadTimeZone(zone, &next.calendar.zone);
  auto published = InsertPolicy(tx, agency_id, next, current->version, "system:program_policy");
  return published.ok() ? absl::OkStatus() : published.status();
}

Store::NewConcern Store::NewConcernOf(ConcernRecord record, bool notified) {
  v1::Concern& c = record.concern;
  // As stored: to the microsecond (what ConcernFromRow would read back).
  const int64_t opened = ProtoMicros(c, c.opened_at(), c.has_opened_at());
  const int64_t ack = ProtoMicros(c, c.ack_deadline(), true);
  c.set_concern_id(RandomUuid());
  c.set_state(v1::CONCERN_STATE_OPEN);
  SetTime(opened, c.mutable_opened_at());
  SetTime(ack, c.mutable_ack_deadline());
  SetTime(ack, c.mutable_next_deadline());
  c.set_breach_count(0);
  c.set_revision(1);
  record.next_deadline_kind = "acknowledgement";
  record.notify_at = FromMicros(Micros(record.notify_at));
  record.acknowledged_level = -1;
  record.routed_to_viewer = true;
  return {std::move(record), notified};
}

void Store::InsertConcerns(DeferredWrites& writes, const std::vector<NewConcern>& concerns) {
  if (concerns.empty()) return;
  // A column per parameter, an element per concern: $1..$15 text, $16..$21 numbers.
  constexpr int kText = 15, kNumbers = 6;
  std::vector<std::vector<std::string>> text(kText);
  std::vector<std::vector<int64_t>> numbers(kNumbers);
  for (const NewConcern& n : concerns) {
    const v1::Concern& c = n.record.concern;
    const std::string row_text[kText] = {c.concern_id(),
                                         c.agency_id(),
                                         c.participant_id(),
                                         c.enrollment_id(),
                                         CategoryCode(c.category()),
                                         SeverityCode(c.severity()),
                                         SourceCode(c.source()),
                                         c.source_event_id(),
                                         c.source_check_in_id(),
                                         c.description(),
                                         c.raised_by(),
                                         c.raised_by_role(),
                                         n.record.policy_id,
                                         TargetKindCode(c.current_target().kind()),
                                         c.current_target().target_id()};
    const int64_t row_numbers[kNumbers] = {c.policy_version(),
                                           c.current_level(),
                                           Micros(FromProtoTimestamp(c.ack_deadline())),
                                           Micros(n.record.notify_at),
                                           Micros(FromProtoTimestamp(c.opened_at())),
                                           n.notified ? 1 : 0};
    for (int i = 0; i < kText; ++i) text[i].push_back(row_text[i]);
    for (int i = 0; i < kNumbers; ++i) numbers[i].push_back(row_numbers[i]);
  }
  // One statement: the concerns and their OPENED and ROUTED transitions, in that order (`seq`,
  // GetConcern's order; rows of one INSERT go in the order of its SELECT).
  writes.Exec("escalation_insert_concerns", R"sql(
    WITH r AS (
      SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
        $13::text[], $14::text[], $15::text[], $16::integer[], $17::integer[], $18::bigint[],
        $19::bigint[], $20::bigint[], $21::integer[])
        WITH ORDINALITY AS r (id, agency, participant, enrollment, category, severity, source,
          source_event_id, source_check_in_id, description, raised_by, raised_by_role, policy_id,
          target_kind, target_id, policy_version, level, ack_us, notify_us, opened_us, notified,
          n)),
    c AS (
      INSERT INTO concerns (id, agency_id, participant_id, enrollment_id, category, severity,
        source, source_event_id, source_check_in_id, description, raised_by, raised_by_role,
        status, policy_id, policy_version, current_level, target_kind, target_id, ack_deadline,
        next_deadline, next_deadline_kind, notify_at, notified_at, opened_at)
      SELECT r.id::uuid, r.agency, r.participant, NULLIF(r.enrollment, '')::uuid, r.category,
        r.severity, r.source, NULLIF(r.source_event_id, ''), NULLIF(r.source_check_in_id, '')::uuid,
        NULLIF(r.description, ''), r.raised_by, r.raised_by_role, 'open', r.policy_id::uuid,
        r.policy_version, r.level, r.target_kind, r.target_id, ts_from_us(r.ack_us),
        ts_from_us(r.ack_us), 'acknowledgement', ts_from_us(r.notify_us),
        CASE WHEN r.notified <> 0 THEN now() END, ts_from_us(r.opened_us)
      FROM r ORDER BY r.n)
    INSERT INTO concern_transitions (agency_id, concern_id, kind, from_status, status_after,
      level, target_kind, target_id, actor, actor_role, occurred_at)
    SELECT r.agency, r.id::uuid, k.kind, CASE WHEN k.n = 2 THEN 'open' END, 'open', r.level,
      r.target_kind, r.target_id, CASE WHEN k.n = 1 THEN r.raised_by ELSE 'system:routing' END,
      CASE WHEN k.n = 1 THEN r.raised_by_role END, ts_from_us(r.opened_us)
    FROM r CROSS JOIN (VALUES (1, 'opened'), (2, 'routed')) AS k (n, kind)
    ORDER BY r.n, k.n)sql",
              TextArrayLiteral(text[0]), TextArrayLiteral(text[1]), TextArrayLiteral(text[2]),
              TextArrayLiteral(text[3]), TextArrayLiteral(text[4]), TextArrayLiteral(text[5]),
              TextArrayLiteral(text[6]), TextArrayLiteral(text[7]), TextArrayLiteral(text[8]),
              TextArrayLiteral(text[9]), TextArrayLiteral(text[10]), TextArrayLiteral(text[11]),
              TextArrayLiteral(text[12]), TextArrayLiteral(text[13]), TextArrayLiteral(text[14]),
              IntegerArrayLiteral(numbers[0]), IntegerArrayLiteral(numbers[1]),
              IntegerArrayLiteral(numbers[2]), IntegerArrayLiteral(numbers[3]),
              IntegerArrayLiteral(numbers[4]), IntegerArrayLiteral(numbers[5]));
}

namespace {

// Concerns of the agency ($1) as a viewer ($2 team kinds, $3 subject) sees them; the caller adds
// which ones.
const std::string& ConcernsAsViewer() {
  static const std::string* const sql =
      new std::string(absl::StrCat("SELECT ", kConcernColumns, ", ", RoutedToViewer(),
                                   " FROM concerns c WHERE c.agency_id = $1"));
  return *sql;
}

}  // namespace

absl::StatusOr<std::optional<ConcernRecord>> Store::FindConcern(pqxx::work& tx,
                                                                const std::string& agency_id,
                                                                const std::string& concern_id,
                                                                const Viewer& viewer, bool lock) {
  // Prepared (every acknowledgement, resolution and escalation reads a concern this way): its
  // planning cost twelve times its execution (1.2 ms against 0.1 ms, measured in the sweeper).
  static const std::string* const read =
      new std::string(absl::StrCat(ConcernsAsViewer(), " AND c.id = $4::uuid"));
  static const std::string* const locked = new std::string(*read + " FOR UPDATE OF c");
  pqxx::result rows =
      ExecPrepared(tx, lock ? "escalation_find_concern_locked" : "escalation_find_concern",
                   lock ? *locked : *read, agency_id, TextArrayLiteral(viewer.team_kinds),
                   viewer.subject, concern_id);
  if (rows.empty()) return std::optional<ConcernRecord>();
  return std::optional<ConcernRecord>(ConcernFromRow(rows[0], true));
}

const std::string& Store::LockConcernsSql() {
  // Without the viewer's column (RoutedToViewer): nothing is routed to the sweeper. Its generic
  // plan, made for about ten ids, hashed the agency's transitions routed to the viewer once per
  // statement, every transition of the agency read to find none.
  static const std::string* const sql = new std::string(
      absl::StrCat("SELECT ", kConcernColumns,
                   " FROM concerns c WHERE c.agency_id = $1 AND c.id = ANY($2::uuid[]) "
                   "ORDER BY c.id FOR UPDATE OF c"));
  return *sql;
}

std::vector<ConcernRecord> Store::LockConcerns(pqxx::work& tx, const std::string& agency_id,
                                               const std::vector<std::string>& concern_ids) {
  const pqxx::result rows = ExecPrepared(tx, "escalation_lock_concerns", LockConcernsSql(),
                                         agency_id, TextArrayLiteral(concern_ids));
  std::vector<ConcernRecord> out;
  out.reserve(rows.size());
  for (const auto& row : rows) out.push_back(ConcernFromRow(row, false));
  return out;
}

namespace {

// The writes below, at once (ImmediateWrites) or with the caller's others (DeferredWrites).
template <typename Writes>
void WriteConcernUpdate(Writes& writes, ConcernRecord& record, absl::Time now) {
  v1::Concern& c = record.concern;
  c.set_revision(c.revision() + 1);
  writes.Exec("escalation_update_concern",
              R"sql(
      UPDATE concerns SET status = $3, current_level = $4, target_kind = $5, target_id = $6,
        ack_deadline = ts_from_us($7), resolve_deadline = ts_from_us($8),
        next_deadline = ts_from_us($9), next_deadline_kind = NULLIF($10, ''),
        notify_at = ts_from_us($11),
        notified_at = CASE WHEN ts_from_us($11) <= ts_from_us($22)
                           THEN coalesce(notified_at, ts_from_us($22)) END,
        breach_count = $12, acknowledged_at = ts_from_us($13),
        acknowledged_by = NULLIF($14, ''), acknowledged_level = NULLIF($15, -1),
        resolved_at = ts_from_us($16), resolved_by = NULLIF($17, ''), outcome = NULLIF($18, ''),
        cancelled_at = ts_from_us($19), cancelled_by = NULLIF($20, ''),
        cancel_reason = NULLIF($21, ''), revision = revision + 1
      WHERE agency_id = $1 AND id = $2::uuid)sql",
              c.agency_id(), c.concern_id(), StateCode(c.state()), c.current_level(),
              TargetKindCode(c.current_target().kind()), c.current_target().target_id(),
              ProtoMicros(c, c.ack_deadline(), c.has_ack_deadline()),
              ProtoMicros(c, c.resolution_deadline(), c.has_resolution_deadline()),
              ProtoMicros(c, c.next_deadline(), c.has_next_deadline()), record.next_deadline_kind,
              Micros(record.notify_at), c.breach_count(),
              ProtoMicros(c, c.acknowledged_at(), c.has_acknowledged_at()), c.acknowledged_by(),
              record.acknowledged_level, ProtoMicros(c, c.resolved_at(), c.has_resolved_at()),
              c.resolved_by(), OutcomeCode(c.outcome()),
              ProtoMicros(c, c.cancelled_at(), c.has_cancelled_at()), c.cancelled_by(),
              c.cancel_reason(), Micros(now));
}

template <typename Writes>
void WriteTransition(Writes& writes, const std::string& agency_id, const std::string& concern_id,
                     const TransitionRecord& t) {
  writes.Exec(
      "escalation_append_transition",
      "INSERT INTO concern_transitions (agency_id, concern_id, kind, from_status, status_after, "
      "level, target_kind, target_id, actor, actor_role, missed_deadline_kind, missed_deadline) "
      "VALUES ($1, $2::uuid, $3, NULLIF($4, ''), $5, $6, NULLIF($7, ''), NULLIF($8, ''), $9, "
      "NULLIF($10, ''), NULLIF($11, ''), ts_from_us($12))",
      agency_id, concern_id, t.kind, t.from_status, t.to_status, t.level,
      t.target ? TargetKindCode(t.target->kind) : "", t.target ? t.target->id : "", t.actor,
      t.actor_role, t.missed_deadline_kind, Micros(t.missed_deadline));
}

}  // namespace

absl::Status Store::UpdateConcern(pqxx::work& tx, ConcernRecord& record, absl::Time now) {
  ImmediateWrites writes{tx};
  WriteConcernUpdate(writes, record, now);
  return absl::OkStatus();
}

void Store::UpdateConcern(DeferredWrites& writes, ConcernRecord& record, absl::Time now) {
  WriteConcernUpdate(writes, record, now);
}

absl::Status Store::AppendTransition(pqxx::work& tx, const std::string& agency_id,
                                     const std::string& concern_id, const TransitionRecord& t) {
  ImmediateWrites writes{tx};
  WriteTransition(writes, agency_id, concern_id, t);
  return absl::OkStatus();
}

void Store::AppendTransitions(
    DeferredWrites& writes, const std::string& agency_id,
    const std::vector<std::pair<std::string, TransitionRecord>>& transitions) {
  if (transitions.empty()) return;
  std::vector<std::string> ids, kinds, from, to, target_kinds, target_ids, actors, roles,
      missed_kinds;
  std::vector<int64_t> levels, missed;
  for (const auto& [concern_id, t] : transitions) {
    ids.push_back(concern_id);
    kinds.push_back(t.kind);
    from.push_back(t.from_status);
    to.push_back(t.to_status);
    levels.push_back(t.level);
    target_kinds.push_back(t.target ? TargetKindCode(t.target->kind) : "");
    target_ids.push_back(t.target ? t.target->id : "");
    actors.push_back(t.actor);
    roles.push_back(t.actor_role);
    missed_kinds.push_back(t.missed_deadline_kind);
    missed.push_back(Micros(t.missed_deadline));
  }
  // Rows in the order given (ORDER BY the ordinality): `seq`, a concern's order of transitions,
  // follows it.
  writes.Exec(
      "escalation_append_transitions",
      "INSERT INTO concern_transitions (agency_id, concern_id, kind, from_status, status_after, "
      "level, target_kind, target_id, actor, actor_role, missed_deadline_kind, missed_deadline) "
      "SELECT $1, t.concern_id, t.kind, NULLIF(t.from_status, ''), t.status_after, t.level, "
      "NULLIF(t.target_kind, ''), NULLIF(t.target_id, ''), t.actor, NULLIF(t.actor_role, ''), "
      "NULLIF(t.missed_kind, ''), ts_from_us(t.missed_us) "
      "FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::integer[], $7::text[], "
      "$8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[]) WITH ORDINALITY "
      "AS t(concern_id, kind, from_status, status_after, level, target_kind, target_id, actor, "
      "actor_role, missed_kind, missed_us, n) ORDER BY t.n",
      agency_id, TextArrayLiteral(ids), TextArrayLiteral(kinds), TextArrayLiteral(from),
      TextArrayLiteral(to), IntegerArrayLiteral(levels), TextArrayLiteral(target_kinds),
      TextArrayLiteral(target_ids), TextArrayLiteral(actors), TextArrayLiteral(roles),
      TextArrayLiteral(missed_kinds), IntegerArrayLiteral(missed));
}

absl::StatusOr<std::vector<v1::ConcernTransition>> Store::Transitions(
    pqxx::work& tx, const std::string& agency_id, const std::string& concern_id) {
  std::vector<v1::ConcernTransition> out;
  for (const auto& row : ExecPrepared(
           tx, "escalation_transitions",
           "SELECT kind, coalesce(from_status, ''), status_after, level, coalesce(target_kind, "
           "''), "
           "coalesce(target_id, ''), actor, coalesce(actor_role, ''), us_from_ts(occurred_at), "
           "coalesce(missed_deadline_kind, ''), us_from_ts(missed_deadline) "
           "FROM concern_transitions WHERE agency_id = $1 AND concern_id = $2::uuid ORDER BY seq",
           agency_id, concern_id)) {
    v1::ConcernTransition t;
    t.set_kind(FromCode(TransitionCodes(), row[0].as<std::string>()));
    t.set_from_state(FromCode(StateCodes(), row[1].as<std::string>()));
    t.set_to_state(FromCode(StateCodes(), row[2].as<std::string>()));
    t.set_level(row[3].as<int>());
    if (!row[4].as<std::string>().empty()) {
      t.mutable_target()->set_kind(FromCode(TargetKindCodes(), row[4].as<std::string>()));
      t.mutable_target()->set_target_id(row[5].as<std::string>());
    }
    t.set_actor(row[6].as<std::string>());
    t.set_actor_role(row[7].as<std::string>());
    SetTime(row[8].as<int64_t>(), t.mutable_occurred_at());
    t.set_missed_deadline_kind(FromCode(DeadlineKindCodes(), row[9].as<std::string>()));
    SetTime(row[10].as<int64_t>(), t.mutable_missed_deadline());
    out.push_back(std::move(t));
  }
  return out;
}

void Store::InsertBreaches(DeferredWrites& writes, const std::string& agency_id,
                           const std::vector<Breach>& breaches) {
  if (breaches.empty()) return;
  std::vector<std::string> ids, kinds, to_kinds, to_ids;
  std::vector<int64_t> levels, deadlines;
  for (const Breach& b : breaches) {
    ids.push_back(b.concern_id);
    kinds.push_back(b.deadline_kind);
    levels.push_back(b.level);
    deadlines.push_back(Micros(b.deadline));
    to_kinds.push_back(b.escalated_to ? TargetKindCode(b.escalated_to->kind) : "");
    to_ids.push_back(b.escalated_to ? b.escalated_to->id : "");
  }
  // No ON CONFLICT: a breach recorded before fails the caller's transaction at its flush.
  writes.Exec("escalation_insert_breaches",
              "INSERT INTO escalation_breaches (agency_id, concern_id, deadline_kind, level, "
              "deadline, escalated_to_kind, escalated_to_id) SELECT $1, b.concern_id, b.kind, "
              "b.level, ts_from_us(b.deadline_us), NULLIF(b.to_kind, ''), NULLIF(b.to_id, '') "
              "FROM unnest($2::uuid[], $3::text[], $4::integer[], $5::bigint[], $6::text[], "
              "$7::text[]) AS b(concern_id, kind, level, deadline_us, to_kind, to_id)",
              agency_id, TextArrayLiteral(ids), TextArrayLiteral(kinds),
              IntegerArrayLiteral(levels), IntegerArrayLiteral(deadlines),
              TextArrayLiteral(to_kinds), TextArrayLiteral(to_ids));
}

namespace {

// ListConcerns' filters of concerns `c` ($4-$11) and its cursor ($12, $13).
constexpr char kListConditions[] = R"sql(
        AND (cardinality($4::text[]) = 0 OR c.status = ANY ($4::text[]))
        AND (cardinality($5::text[]) = 0 OR c.severity = ANY ($5::text[]))
        AND (cardinality($6::text[]) = 0 OR c.category = ANY ($6::text[]))
        AND ($7 = '' OR c.target_kind = $7) AND ($8 = '' OR c.target_id = $8)
        AND ($9 = '' OR c.participant_id = $9)
        AND (NOT $10 OR (c.status IN ('open', 'acknowledged')
                         AND c.next_deadline <= ts_from_us($11)))
        AND ($12::bigint = 0 OR (c.opened_at, c.id) < (ts_from_us($12), $13::uuid)))sql";

// The page of `candidates` (a query of concern ids) the viewer may see, newest first: whether each
// is routed to the viewer is asked of the page's concerns only.
std::string ListPageSql(const std::string& candidates) {
  return absl::StrCat("SELECT * FROM (SELECT ", kConcernColumns, ", ", RoutedToViewer(),
                      " AS routed, c.opened_at AS opened_order, c.id AS id_order FROM ", candidates,
                      ") s WHERE s.routed OR s.raised_by = $3 ",
                      "ORDER BY s.opened_order DESC, s.id_order DESC LIMIT $14");
}

// A viewer who acts for a team sees most of the agency's concerns: the page is read from
// concerns_listed, backwards from the cursor (ordered by the columns themselves, not their text;
// its predicate, opened_at IS NOT NULL, stated for it), until it is full.
const std::string& TeamListSql() {
  static const std::string* const sql = new std::string(ListPageSql(absl::StrCat(
      "concerns c WHERE c.agency_id = $1 AND c.opened_at IS NOT NULL", kListConditions)));
  return *sql;
}

// A viewer who acts for no team (a peer supporter, a supervisor) may see few of them: their
// concerns are gathered from their side, each source read newest first up to a page (everything
// a source gives is the viewer's to see), and the page is the newest of them all. The sources:
// raised by the viewer (concerns_by_raiser); routed to them in person
// (concern_transitions_to_person); for a supervisor, raised by a supporter they supervise
// (concerns_by_raiser) and about a participant of such a supporter's active match
// (concerns_by_participant), as RoutedToViewer's supervision test.
const std::string& PersonListSql() {
  static const std::string* const sql = new std::string([] {
    // The newest concerns `c` of `from` (a FROM clause and its WHERE) up to a page.
    const auto newest = [](const std::string& from) {
      return absl::StrCat("(SELECT c.id FROM ", from, kListConditions,
                          " ORDER BY c.opened_at DESC, c.id DESC LIMIT $14)");
    };
    // The newest concerns whose `concern_column` is the `match_column` of one of the viewer's
    // supervised matches (`matches` further conditions), each value's read as its own source.
    const auto of_each_supervised = [&](const std::string& match_column,
                                        const std::string& concern_column,
                                        const std::string& matches) {
      return absl::StrCat(
          "(SELECT r.id FROM (SELECT DISTINCT m.", match_column,
          " FROM supporter_matches m WHERE m.agency_id = $1 AND "
          "m.supervisor_subject = $3 AND 'supervised_supporters' = ANY ($2::text[])",
          matches, ") s CROSS JOIN LATERAL ",
          newest(absl::StrCat("concerns c WHERE c.agency_id = $1 AND c.", concern_column, " = s.",
                              match_column)),
          " r)");
    };
    const std::string raised = newest("concerns c WHERE c.agency_id = $1 AND c.raised_by = $3");
    const std::string routed =
        newest(absl::StrCat("(SELECT DISTINCT t.concern_id FROM concern_transitions t WHERE "
                            "t.agency_id = $1 AND t.target_kind IN (",
                            SqlList(kPersonTargetKinds),
                            ") AND t.target_id = $3) p JOIN concerns c ON c.agency_id = $1 AND "
                            "c.id = p.concern_id WHERE TRUE"));
    const std::string candidates =
        absl::StrJoin({raised, routed, of_each_supervised("supporter_subject", "raised_by", ""),
                       of_each_supervised("participant_id", "participant_id", " AND m.active")},
                      " UNION ALL ");
    return ListPageSql(
        absl::StrCat("(SELECT * FROM concerns c WHERE c.agency_id = $1 AND c.id IN (", candidates,
                     ") ORDER BY c.opened_at DESC, c.id DESC LIMIT $14) c"));
  }());
  return *sql;
}

}  // namespace

std::string Store::ListCursor(const v1::Concern& last) {
  return absl::StrCat(absl::ToUnixMicros(FromProtoTimestamp(last.opened_at())), "/",
                      last.concern_id());
}

absl::StatusOr<std::vector<ConcernRecord>> Store::ListConcerns(
    pqxx::work& tx, const std::string& agency_id, const Viewer& viewer, const ListFilter& filter,
    const std::string& cursor, int limit) {
  int64_t cursor_us = 0;
  std::string cursor_id;
  if (!cursor.empty()) {
    std::pair<std::string, std::string> parts = absl::StrSplit(cursor, absl::MaxSplits('/', 1));
    if (!absl::SimpleAtoi(parts.first, &cursor_us)) {
      return absl::InvalidArgumentError("page_token is malformed");
    }
    cursor_id = parts.second;
  }
  const std::string& sql = ActsForATeam(viewer) ? TeamListSql() : PersonListSql();
  std::vector<ConcernRecord> out;
  for (const auto& row : tx.exec_params(
           sql, agency_id, TextArrayLiteral(viewer.team_kinds), viewer.subject,
           TextArrayLiteral(filter.states), TextArrayLiteral(filter.severities),
           TextArrayLiteral(filter.categories), filter.target_kind, filter.target_id,
           filter.participant_id, filter.overdue_only, Micros(filter.now), cursor_us,
           cursor_id.empty() ? "00000000-0000-0000-0000-000000000000" : cursor_id, limit)) {
    out.push_back(ConcernFromRow(row, true));
  }
  return out;
}

absl::StatusOr<std::vector<ConcernRecord>> Store::OpenForTarget(pqxx::work& tx,
                                                                const std::string& agency_id,
                                                                const Target& target) {
  std::vector<ConcernRecord> out;
  for (const auto& row : tx.exec_params(
           absl::StrCat("SELECT ", kConcernColumns,
                        " FROM concerns c WHERE c.agency_id = $1 AND c.target_kind = $2 AND "
                        "c.target_id = $3 AND c.status IN ('open', 'acknowledged') "
                        "ORDER BY c.opened_at, c.id"),
           agency_id, TargetKindCode(target.kind), target.id)) {
    out.push_back(ConcernFromRow(row, false));
  }
  return out;
}

const char kSweeperSetting[] = "app.escalation_sweeper";
const char kDueConcernsSql[] =
    "SELECT agency_id, id::text FROM concerns WHERE status IN ('open', 'acknowledged') AND "
    "next_deadline <= ts_from_us($1) ORDER BY next_deadline LIMIT $2";
const char kPendingNotificationsSql[] =
    "SELECT agency_id, id::text FROM concerns WHERE notified_at IS NULL AND status IN ('open', "
    "'acknowledged') AND notify_at <= ts_from_us($1) ORDER BY notify_at LIMIT $2";

const char kOpenCountsSql[] =
    "SELECT severity, count(*), count(*) FILTER (WHERE next_deadline <= ts_from_us($1)) FROM "
    "concerns WHERE status IN ('open', 'acknowledged') GROUP BY severity";

namespace {

// The sweeper's read `sql` ($1 now, $2 how many), prepared as `name`: the agency and id of each
// concern it finds, in a sweeper transaction on index scans.
absl::StatusOr<std::vector<Store::DueConcern>> SweeperRead(Database& db, const char* name,
                                                           const char* sql, absl::Time now,
                                                           int limit) {
  return db.TransactWithSetting(
      kSweeperSetting, "on",
      [&](pqxx::work& tx) -> absl::StatusOr<std::vector<Store::DueConcern>> {
        std::vector<Store::DueConcern> found;
        for (const auto& row : ExecPrepared(tx, name, sql, Micros(now), limit)) {
          found.push_back({row[0].as<std::string>(), row[1].as<std::string>()});
        }
        return found;
      },
      Plans::kIndexScans);
}

}  // namespace

absl::StatusOr<std::vector<Store::DueConcern>> Store::DueConcerns(Database& db, absl::Time now,
                                                                  int limit) {
  return SweeperRead(db, "escalation_due_concerns", kDueConcernsSql, now, limit);
}

absl::StatusOr<std::vector<Store::DueConcern>> Store::PendingNotifications(Database& db,
                                                                           absl::Time now,
                                                                           int limit) {
  return SweeperRead(db, "escalation_pending_notifications", kPendingNotificationsSql, now, limit);
}

absl::StatusOr<std::optional<ConcernRecord>> Store::MarkNotified(pqxx::work& tx,
                                                                 const std::string& agency_id,
                                                                 const std::string& concern_id,
                                                                 absl::Time now) {
  static const std::string* const sql = new std::string(
      absl::StrCat("UPDATE concerns c SET notified_at = ts_from_us($3) WHERE c.agency_id = $1 AND "
                   "c.id = $2::uuid AND c.notified_at IS NULL AND c.notify_at <= ts_from_us($3) "
                   "AND c.status IN ('open', 'acknowledged') RETURNING ",
                   kConcernColumns));
  pqxx::result rows =
      ExecPrepared(tx, "escalation_mark_notified", *sql, agency_id, concern_id, Micros(now));
  if (rows.empty()) return std::optional<ConcernRecord>();
  return std::optional<ConcernRecord>(ConcernFromRow(rows[0], false));
}

absl::StatusOr<Store::Counts> Store::CountOpen(Database& db, absl::Time now) {
  return db.TransactWithSetting(
      kSweeperSetting, "on", [&](pqxx::work& tx) -> absl::StatusOr<Counts> {
        Counts counts;
        for (const auto& row : tx.exec_params(kOpenCountsSql, Micros(now))) {
          counts.open[row[0].as<std::string>()] = row[1].as<int64_t>();
          counts.overdue[row[0].as<std::string>()] = row[2].as<int64_t>();
        }
        return counts;
      });
}

}  // namespace peerpath::escalation
