#include "services/evaluation/evaluation_service.h"

#include <algorithm>
#include <cmath>
#include <future>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/audit.h"
#include "common/channel.h"
#include "common/db.h"
#include "common/event_source.h"
#include "common/idempotency.h"
#include "common/identifiers.h"
#include "common/log.h"
#include "common/pagination.h"
#include "common/rpc_observer.h"
#include "common/status.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"
#include "peerpath/consent/v1/consent.grpc.pb.h"
#include "peerpath/escalation/v1/escalation.grpc.pb.h"
#include "peerpath/matching/v1/matching.grpc.pb.h"
#include "services/evaluation/read_models.h"
#include "services/evaluation/report_store.h"
#include "services/evaluation/suppression.h"

namespace peerpath::evaluation {
namespace {

constexpr char kService[] = "peerpath.evaluation.v1.EvaluationService";
constexpr char kDefinitionsList[] = "evaluation.ListMeasureDefinitions";

bool IsPathwayKey(const std::string& key) {
  if (key.empty() || key.size() > 63 || !absl::ascii_islower(static_cast<unsigned char>(key[0]))) {
    return false;
  }
  return std::all_of(key.begin(), key.end(), [](char ch) {
    return absl::ascii_islower(static_cast<unsigned char>(ch)) ||
           absl::ascii_isdigit(static_cast<unsigned char>(ch)) || ch == '_';
  });
}

bool HasControl(const std::string& text) {
  return std::any_of(text.begin(), text.end(),
                     [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f; });
}

std::string SettingName(v1::DischargeSetting setting) {
  switch (setting) {
    case v1::DISCHARGE_SETTING_INPATIENT_MENTAL_HEALTH:
      return "inpatient_mental_health";
    case v1::DISCHARGE_SETTING_CRISIS_STABILIZATION:
      return "crisis_stabilization";
    default:
      return "";
  }
}

v1::DischargeSetting SettingFromName(const std::string& name) {
  if (name == "inpatient_mental_health") return v1::DISCHARGE_SETTING_INPATIENT_MENTAL_HEALTH;
  if (name == "crisis_stabilization") return v1::DISCHARGE_SETTING_CRISIS_STABILIZATION;
  return v1::DISCHARGE_SETTING_UNSPECIFIED;
}

// The period as [start, end) instants (local midnights in `zone`), or INVALID_ARGUMENT naming
// the field.
absl::Status ResolvePeriod(const v1::ReportPeriod* period, bool has_period, absl::Time now,
                           absl::TimeZone zone, absl::Time& start, absl::Time& end) {
  std::vector<FieldViolation> violations;
  if (!has_period) {
    return InvalidArgument("period is required", {{"period", "required"}});
  }
  int months = 0;
  switch (period->kind()) {
    case v1::PERIOD_KIND_MONTH:
      months = 1;
      break;
    case v1::PERIOD_KIND_QUARTER:
      months = 3;
      break;
    case v1::PERIOD_KIND_YEAR:
      months = 12;
      break;
    default:
      violations.push_back({"period.kind", "required: MONTH, QUARTER or YEAR"});
  }
  const common::v1::Date& d = period->start_date();
  const absl::CivilDay day(d.year(), d.month(), d.day());
  const absl::CivilMonth current(absl::ToCivilSecond(now, zone));
  if (!period->has_start_date()) {
    violations.push_back({"period.start_date", "required"});
  } else if (day.year() != d.year() || day.month() != d.month() || day.day() != d.day() ||
             d.day() != 1) {
    violations.push_back({"period.start_date", "must be the first day of a month"});
  } else if (day < absl::CivilDay(2000, 1, 1)) {
    violations.push_back({"period.start_date", "must not be before 2000-01-01"});
  } else if (absl::CivilMonth(day) > current) {
    violations.push_back({"period.start_date", "must not be after the current month"});
  }
  if (!violations.empty()) return InvalidArgument("invalid report period", violations);
  start = absl::FromCivil(day, zone);
  end = absl::FromCivil(absl::CivilDay(absl::CivilMonth(day) + months), zone);
  return absl::OkStatus();
}

common::v1::Date ToDate(absl::CivilDay day) {
  common::v1::Date d;
  d.set_year(static_cast<int32_t>(day.year()));
  d.set_month(day.month());
  d.set_day(day.day());
  return d;
}

// Index of each measure's first cell in one scope's cells (report order).
std::map<v1::Measure, int> FirstCells(const std::vector<ComputedCell>& cells) {
  std::map<v1::Measure, int> first;
  for (int i = 0; i < static_cast<int>(cells.size()); ++i) first.emplace(cells[i].measure, i);
  return first;
}

// The additive groups of one scope's cells starting at `base` (report order of measures.cc).
void ScopeGroups(const std::vector<ComputedCell>& cells, int base,
                 std::vector<AdditiveGroup>& groups) {
  const auto first = FirstCells(cells);
  for (v1::Measure m :
       {v1::MEASURE_FIRST_APPOINTMENT_ATTENDANCE, v1::MEASURE_CRISIS_RECONTACT_30D,
        v1::MEASURE_CRISIS_RECONTACT_90D, v1::MEASURE_FOLLOW_UP_AFTER_EMERGENCY_VISIT_7D,
        v1::MEASURE_FOLLOW_UP_AFTER_EMERGENCY_VISIT_30D,
        v1::MEASURE_FOLLOW_UP_AFTER_HOSPITALIZATION_7D,
        v1::MEASURE_FOLLOW_UP_AFTER_HOSPITALIZATION_30D}) {
    const int at = base + first.at(m);
    groups.push_back({at, {at + 1, at + 2}});
  }
  // Concerns raised: total 0, categories 1..7, severities 8..10, category x severity 11..31.
  const int c = base + first.at(v1::MEASURE_CONCERNS_RAISED);
  AdditiveGroup by_category{c, {}}, by_severity{c, {}};
  for (int i = 0; i < 7; ++i) by_category.parts.push_back(c + 1 + i);
  for (int j = 0; j < 3; ++j) by_severity.parts.push_back(c + 8 + j);
  groups.push_back(by_category);
  groups.push_back(by_severity);
  for (int i = 0; i < 7; ++i) {
    groups.push_back({c + 1 + i, {c + 11 + i * 3, c + 12 + i * 3, c + 13 + i * 3}});
  }
  for (int j = 0; j < 3; ++j) {
    AdditiveGroup column{c + 8 + j, {}};
    for (int i = 0; i < 7; ++i) column.parts.push_back(c + 11 + i * 3 + j);
    groups.push_back(column);
  }
  for (v1::Measure m : {v1::MEASURE_TIME_TO_ACKNOWLEDGE, v1::MEASURE_DEADLINE_BREACHES}) {
    const int at = base + first.at(m);
    groups.push_back({at, {at + 1, at + 2, at + 3}});
  }
  // The three directions share their denominator, which every shown direction shows.
  const int w = base + first.at(v1::MEASURE_WELLBEING_TREND);
  groups.push_back({-1, {w, w + 1, w + 2}});
}

std::string CsvField(const std::string& text) {
  std::string value = text;
  if (!value.empty() &&
      (value[0] == '=' || value[0] == '+' || value[0] == '-' || value[0] == '@')) {
    value = "'" + value;
  }
  if (value.find_first_of(",\"\r\n") == std::string::npos) return value;
  std::string quoted = "\"";
  for (char ch : value) {
    if (ch == '"') quoted += '"';
    quoted += ch;
  }
  return quoted + "\"";
}

// `value` rounded half away from zero to `places` decimals, with exactly that many.
std::string Fixed(double value, int places) {
  const double scale = std::pow(10.0, places);
  const double rounded = std::round(value * scale);  // std::round: half away from zero.
  const bool negative = rounded < 0;
  const auto units = static_cast<int64_t>(std::fabs(rounded));
  const auto s = static_cast<int64_t>(scale);
  return absl::StrFormat("%s%d.%0*d", negative ? "-" : "", units / s, places, units % s);
}

std::string EnumText(const std::string& name, const std::string& prefix) {
  return absl::AsciiStrToLower(name.substr(prefix.size()));
}

std::string DateText(const common::v1::Date& d) {
  return absl::StrFormat("%04d-%02d-%02d", d.year(), d.month(), d.day());
}

}  // namespace

std::string CsvHeader() {
  return "agency_id,period_start,period_end,program_id,pathway_key,measure_id,measure_name,unit,"
         "cohort,concern_category,concern_severity,rater,wellbeing_direction,suppressed,count,"
         "numerator,denominator,rate,n,mean,median,p90,definitions_version,unavailable,"
         "time_zone\r\n";
}

std::string CsvRow(const v1::ProgramReport& report, const v1::ReportCell& cell) {
  const MeasureInfo* info = nullptr;
  for (const MeasureInfo& m : Measures()) {
    if (m.measure == cell.measure()) info = &m;
  }
  std::string cohort, category, severity, rater, direction;
  for (const v1::DimensionValue& d : cell.dimensions()) {
    switch (d.value_case()) {
      case v1::DimensionValue::kCohort:
        cohort = EnumText(v1::Cohort_Name(d.cohort()), "COHORT_");
        break;
      case v1::DimensionValue::kConcernCategory:
        category =
            EnumText(common::v1::ConcernCategory_Name(d.concern_category()), "CONCERN_CATEGORY_");
        break;
      case v1::DimensionValue::kConcernSeverity:
        severity =
            EnumText(common::v1::ConcernSeverity_Name(d.concern_severity()), "CONCERN_SEVERITY_");
        break;
      case v1::DimensionValue::kRater:
        rater = EnumText(v1::Rater_Name(d.rater()), "RATER_");
        break;
      case v1::DimensionValue::kWellbeingDirection:
        direction =
            EnumText(v1::WellbeingDirection_Name(d.wellbeing_direction()), "WELLBEING_DIRECTION_");
        break;
      default:
        break;
    }
  }
  // period_end: the last local day, inclusive.
  absl::TimeZone zone = absl::UTCTimeZone();
  absl::LoadTimeZone(report.time_zone(), &zone);
  const absl::CivilDay end_day = absl::CivilDay(absl::ToCivilSecond(
                                     FromProtoTimestamp(report.period_range().end_time()), zone)) -
                                 1;
  std::vector<std::string> f = {
      CsvField(report.agency_id()),
      DateText(report.period().start_date()),
      DateText(ToDate(end_day)),
      CsvField(report.program_id()),
      CsvField(report.pathway_key()),
      cell.measure_id(),
      CsvField(info == nullptr ? "" : info->name),
      info == nullptr ? "" : EnumText(v1::MeasureUnit_Name(info->unit), "MEASURE_UNIT_"),
      cohort,
      category,
      severity,
      rater,
      direction,
      cell.suppressed() ? "true" : "false"};
  std::string count, numerator, denominator, rate, n, mean, median, p90;
  switch (cell.value_case()) {
    case v1::ReportCell::kCount:
      count = absl::StrCat(cell.count().count());
      break;
    case v1::ReportCell::kRate:
      numerator = absl::StrCat(cell.rate().numerator());
      denominator = absl::StrCat(cell.rate().denominator());
      rate = Fixed(cell.rate().rate(), 4);
      break;
    case v1::ReportCell::kDurationSummary:
      n = absl::StrCat(cell.duration_summary().count());
      median = absl::StrCat(cell.duration_summary().median().seconds());
      p90 = absl::StrCat(cell.duration_summary().p90().seconds());
      break;
    case v1::ReportCell::kNumericSummary:
      n = absl::StrCat(cell.numeric_summary().count());
      mean = Fixed(cell.numeric_summary().mean(), 2);
      median = Fixed(cell.numeric_summary().median(), 2);
      p90 = Fixed(cell.numeric_summary().p90(), 2);
      break;
    default:
      break;
  }
  for (std::string* v : {&count, &numerator, &denominator, &rate, &n, &mean, &median, &p90}) {
    f.push_back(*v);
  }
  f.push_back(absl::StrCat(report.definitions_version()));
  f.push_back(cell.unavailable() ? "true" : "false");
  f.push_back(CsvField(report.time_zone()));
  return absl::StrCat(absl::StrJoin(f, ","), "\r\n");
}

const RoleRules& EvaluationService::Rules() {
  using enum Role;
  // Reports are small-cell suppressed aggregates; operations reads only those.
  static const auto* const rules = new RoleRules{
      {"RecordServiceOutcome", {kIntegration}},
      {"GetProgramReport", {kProgramAdmin, kSupervisor, kIntegration, kOperations}},
      {"ExportReport", {kProgramAdmin, kSupervisor, kIntegration, kOperations}},
      {"ListMeasureDefinitions", {kProgramAdmin, kSupervisor, kIntegration, kOperations}},
      {"GetPipelineStatus", {kOperations}},
  };
  return *rules;
}

template <typename Service, typename ListRequest, typename ListResponse>
void EvaluationService::StartConsumer(Source& source, const std::string& address,
                                      EventHandler apply, ConsumerOptions options) {
  if (address.empty()) return;
  options.source = source.name;
  EventFetcher fetch =
      FetcherOf<Service, ListRequest, ListResponse>(context_, address, source.name);
  std::shared_ptr<SourceTracker> tracker = source.tracker;
  auto now = now_;
  EventFetcher tracked = [fetch, tracker, now](int64_t after,
                                               int page_size) -> absl::StatusOr<EventPage> {
    auto page = fetch(after, page_size);
    const absl::Time at = now();
    std::lock_guard<std::mutex> lock(tracker->mu);
    if (!page.ok()) {
      tracker->connected = false;
      tracker->last_error_code = GrpcCodeName(static_cast<grpc::StatusCode>(page.status().code()));
      tracker->last_error_at = at;
      return page;
    }
    tracker->connected = true;
    // The same page asked for again after it returned events: applying it failed.
    tracker->blocked = tracker->last_after == after && tracker->last_page_had_events;
    tracker->last_after = after;
    tracker->last_page_had_events = !page->events.empty();
    tracker->head = page->head_position;
    tracker->head_observed_at = at;
    if (page->head_position > after) {
      if (!tracker->behind_since) tracker->behind_since = at;
    } else {
      tracker->behind_since.reset();
      tracker->caught_up_at = at;
    }
    return page;
  };
  source.consumer = std::make_unique<EventConsumer>(
      context_.db, std::move(options), std::move(tracked), std::move(apply), &context_.metrics);
  source.consumer->Start();
}

EvaluationService::EvaluationService(ServiceContext& context, EvaluationOptions options)
    : context_(context),
      options_(std::move(options)),
      authorizer_(context.verifier, kService, Rules(), &context.db) {
  open_concerns_ = &prometheus::BuildGauge()
                        .Name("peerpath_evaluation_open_concerns")
                        .Help(
                            "Concerns open (not resolved or cancelled), by severity, from the "
                            "escalation log")
                        .Register(context.metrics);
  overdue_concerns_ = &prometheus::BuildGauge()
                           .Name("peerpath_evaluation_overdue_concerns")
                           .Help("Open concerns that missed a deadline, by severity")
                           .Register(context.metrics);
  active_enrollments_ = &prometheus::BuildGauge()
                             .Name("peerpath_evaluation_active_enrollments")
                             .Help("Enrollments started and not ended, from the check-in log")
                             .Register(context.metrics)
                             .Add({});

  if (options_.replay) {
    auto reset = context_.db.Transact([](pqxx::work& tx) { return ResetReadModels(tx); });
    if (!reset.ok()) {
      log::Error("replay: could not empty the read models",
                 {{"error", std::string(reset.message())}});
    } else {
      log::Info("replay: read models emptied; every event log is re-read from position 0", {});
    }
  }

  auto add = [&](const char* name, const char* service, v1::EventSource source) {
    sources_.push_back(Source{name, service, source, std::make_shared<SourceTracker>(), nullptr});
  };
  add("checkin", "peerpath.checkin.v1.CheckInService", v1::EVENT_SOURCE_CHECKIN);
  add("matching", "peerpath.matching.v1.MatchingService", v1::EVENT_SOURCE_MATCHING);
  add("escalation", "peerpath.escalation.v1.EscalationService", v1::EVENT_SOURCE_ESCALATION);
  add("consent", "peerpath.consent.v1.ConsentService", v1::EVENT_SOURCE_CONSENT);
  StartConsumer<checkin::v1::CheckInService, checkin::v1::ListEventsRequest,
                checkin::v1::ListEventsResponse>(sources_[0], options_.checkin_address,
                                                 ApplyCheckInEvent, CheckInConsumerOptions());
  StartConsumer<matching::v1::MatchingService, matching::v1::ListEventsRequest,
                matching::v1::ListEventsResponse>(sources_[1], options_.matching_address,
                                                  ApplyMatchingEvent, {});
  StartConsumer<escalation::v1::EscalationService, escalation::v1::ListEventsRequest,
                escalation::v1::ListEventsResponse>(sources_[2], options_.escalation_address,
                                                    ApplyEscalationEvent, {});
  StartConsumer<consent::v1::ConsentService, consent::v1::ListEventsRequest,
                consent::v1::ListEventsResponse>(sources_[3], options_.consent_address,
                                                 ApplyConsentEvent, {});

  // The first refresh one interval after start (the schema may still be migrating now).
  gauge_thread_ = std::thread([this] {
    while (!context_.stopping.WaitFor(options_.gauge_interval)) {
      if (auto st = RefreshGauges(); !st.ok()) {
        log::Warn("evaluation gauges: not refreshed", {{"error", std::string(st.message())}});
      }
    }
  });
}

EvaluationService::~EvaluationService() {
  for (Source& s : sources_) {
    if (s.consumer != nullptr) s.consumer->Stop();
  }
  if (gauge_thread_.joinable()) gauge_thread_.join();
}

absl::Status EvaluationService::RefreshGauges() {
  return context_.db.Transact([&](pqxx::work& tx) -> absl::Status {
    tx.exec("SELECT set_config('app.evaluation_gauges', 'on', true)");
    std::map<int, std::pair<int64_t, int64_t>> by_severity;
    for (const auto& row : tx.exec(
             "SELECT severity, count(*), count(*) FILTER (WHERE breached OR (acknowledged_at IS "
             "NULL AND ack_deadline < now())) FROM concerns WHERE opened_at IS NOT NULL AND "
             "closed_at IS NULL AND severity IS NOT NULL GROUP BY severity")) {
      by_severity[row[0].as<int>()] = {row[1].as<int64_t>(), row[2].as<int64_t>()};
    }
    for (int severity = 1; severity <= 3; ++severity) {
      const std::string label = EnumText(
          common::v1::ConcernSeverity_Name(static_cast<common::v1::ConcernSeverity>(severity)),
          "CONCERN_SEVERITY_");
      open_concerns_->Add({{"severity", label}})
          .Set(static_cast<double>(by_severity[severity].first));
      overdue_concerns_->Add({{"severity", label}})
          .Set(static_cast<double>(by_severity[severity].second));
    }
    active_enrollments_->Set(static_cast<double>(
        tx.exec1("SELECT count(*) FROM enrollments WHERE ended_at IS NULL")[0].as<int64_t>()));
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------------------------
// RecordServiceOutcome

grpc::Status EvaluationService::RecordServiceOutcome(grpc::ServerContext* context,
                                                     const v1::RecordServiceOutcomeRequest* request,
                                                     v1::RecordServiceOutcomeResponse* response) {
  auto caller = authorizer_.Authorize(*context, "RecordServiceOutcome");
  if (!caller.ok()) return ToGrpc(caller.status());
  const v1::RecordServiceOutcomeRequest& r = *request;
  std::vector<FieldViolation> violations;
  if (r.participant_id().empty() || r.participant_id().size() > 128 ||
      HasControl(r.participant_id())) {
    violations.push_back(
        {"participant_id", "required: 1 to 128 characters, no control characters"});
  }
  if (r.kind() == v1::SERVICE_OUTCOME_KIND_UNSPECIFIED || OutcomeKindName(r.kind()).empty()) {
    violations.push_back({"kind", "required: a known service outcome kind"});
  }
  if (r.kind() == v1::SERVICE_OUTCOME_KIND_DISCHARGE &&
      SettingName(r.discharge_setting()).empty()) {
    violations.push_back({"discharge_setting", "required for a DISCHARGE"});
  } else if (r.kind() != v1::SERVICE_OUTCOME_KIND_DISCHARGE &&
             r.discharge_setting() != v1::DISCHARGE_SETTING_UNSPECIFIED) {
    violations.push_back({"discharge_setting", "must be unspecified unless kind is DISCHARGE"});
  }
  const absl::Time now = now_();
  if (!r.has_occurred_at()) {
    violations.push_back({"occurred_at", "required"});
  } else {
    const absl::Time at = FromProtoTimestamp(r.occurred_at());
    if (at < absl::FromCivil(absl::CivilDay(2000, 1, 1), absl::UTCTimeZone()) ||
        at > now + absl::Minutes(10)) {
      violations.push_back(
          {"occurred_at", "must be from 2000-01-01 to at most 10 minutes after now"});
    }
  }
  const bool has_system = !r.source_system().empty();
  const bool has_reference = !r.source_reference().empty();
  if (has_system != has_reference) {
    violations.push_back({has_system ? "source_reference" : "source_system",
                          "source_system and source_reference are given together"});
  }
  if (has_system && !IsWordOf(r.source_system(), 1, 64, "_.:-")) {
    violations.push_back({"source_system", "1 to 64 characters of [A-Za-z0-9_.:-]"});
  }
  if (has_reference && !IsWordOf(r.source_reference(), 1, 128, "_.:/-")) {
    violations.push_back({"source_reference", "1 to 128 characters of [A-Za-z0-9_.:/-]"});
  }
  if (auto st = ValidateIdempotencyKey(r.idempotency_key()); !st.ok()) {
    violations.push_back({"idempotency_key", "required: 1 to 128 characters of [A-Za-z0-9_.:-]"});
  }
  if (!violations.empty()) {
    return ToGrpc(InvalidArgument("invalid service outcome", violations));
  }
  const std::string request_id = RequestId(*context);
  IdempotentCall call{caller->agency_id, r.idempotency_key(), "RecordServiceOutcome", &r,
                      caller->subject};
  auto status = RunIdempotent(
      context_.db, call, *response,
      [&](pqxx::work& tx, google::protobuf::Message& out) -> absl::Status {
        auto& resp = static_cast<v1::RecordServiceOutcomeResponse&>(out);
        const int64_t occurred = absl::ToUnixMicros(FromProtoTimestamp(r.occurred_at()));
        auto fill = [&](const pqxx::row& row) {
          v1::ServiceOutcome* o = resp.mutable_outcome();
          o->set_outcome_id(row[0].as<std::string>());
          o->set_agency_id(caller->agency_id);
          o->set_participant_id(row[1].as<std::string>());
          o->set_kind(OutcomeKindFromName(row[2].as<std::string>()));
          o->set_discharge_setting(
              SettingFromName(row[3].is_null() ? "" : row[3].as<std::string>()));
          *o->mutable_occurred_at() = ToProtoTimestamp(absl::FromUnixMicros(row[4].as<int64_t>()));
          o->set_source_system(row[5].is_null() ? "" : row[5].as<std::string>());
          o->set_source_reference(row[6].is_null() ? "" : row[6].as<std::string>());
          o->set_reported_by(row[7].as<std::string>());
          *o->mutable_reported_at() = ToProtoTimestamp(absl::FromUnixMicros(row[8].as<int64_t>()));
        };
        const std::string columns =
            "id::text, participant_id, kind, discharge_setting, " PEERPATH_SQL_MICROS("occurred_at")
            ", source_system, source_reference, reported_by, " PEERPATH_SQL_MICROS("reported_at");
        if (has_system) {
          const auto existing =
              tx.exec_params("SELECT " + columns +
                                 " FROM service_outcomes WHERE agency_id = $1 AND "
                                 "source_system = $2 AND source_reference = $3",
                             caller->agency_id, r.source_system(), r.source_reference());
          if (!existing.empty()) {
            const auto& row = existing[0];
            const bool same = row[1].as<std::string>() == r.participant_id() &&
                              row[2].as<std::string>() == OutcomeKindName(r.kind()) &&
                              (row[3].is_null() ? "" : row[3].as<std::string>()) ==
                                  SettingName(r.discharge_setting()) &&
                              row[4].as<int64_t>() == occurred;
            if (!same) {
              return absl::AlreadyExistsError(
                  "source_system and source_reference were already recorded with different "
                  "content (corrections are not supported)");
            }
            fill(row);
            resp.set_already_recorded(true);
            return absl::OkStatus();
          }
        }
        const std::string setting = SettingName(r.discharge_setting());
        const auto row = tx.exec_params1(
            "INSERT INTO service_outcomes (agency_id, participant_id, kind, discharge_setting, "
            "occurred_at, source_system, source_reference, reported_by) VALUES ($1, $2, $3, "
            "NULLIF($4, ''), " PEERPATH_SQL_TIME_PARAM(
                5) ", NULLIF($6, ''), NULLIF($7, ''), $8) RETURNING " +
                columns,
            caller->agency_id, r.participant_id(), OutcomeKindName(r.kind()), setting, occurred,
            r.source_system(), r.source_reference(), caller->subject);
        fill(row);
        AuditEntry entry;
        entry.actor = caller->subject;
        entry.actor_role = "integration";
        entry.action = absl::StrCat(kService, ".RecordServiceOutcome");
        entry.object_type = "service_outcome";
        entry.object_id = resp.outcome().outcome_id();
        entry.participant_id = r.participant_id();
        entry.request_id = request_id;
        auto seq = AppendAudit(tx, caller->agency_id, entry);
        return seq.ok() ? absl::OkStatus() : seq.status();
      });
  return ToGrpc(status);
}

// ---------------------------------------------------------------------------------------------
// Reports

absl::Status BuildProgramReport(Database& db, const std::string& agency_id,
                                const v1::ReportPeriod& period, const std::string& program_id,
                                const std::string& pathway_key, int min_cell_size, absl::Time now,
                                v1::ProgramReport& report) {
  absl::Time start, end;
  std::string zone_name;
  std::vector<std::string> pathways, programs;
  std::vector<ScopeKey> pairs;
  std::future<absl::StatusOr<RollupRows>> contact_days, wellbeing;
  auto facts = db.TransactForAgency(agency_id, [&](pqxx::work& tx) -> absl::StatusOr<ReportFacts> {
    // Periods and local days are the agency's (UTC until the check-in log names its zone).
    zone_name = AgencyTimeZone(tx);
    absl::TimeZone zone;
    if (!absl::LoadTimeZone(zone_name, &zone)) {
      return absl::InternalError("the stored agency time zone is unknown to this build");
    }
    if (auto st = ResolvePeriod(&period, true, now, zone, start, end); !st.ok()) return st;
    const ReportWindow window{start, end, zone_name, zone};
    // The two rollups are read on other pooled connections while this one reads the rest: the
    // three parts of a report's reading take about as long each, and PostgreSQL runs them side
    // by side. (Each statement sees its own snapshot either way: READ COMMITTED.) With one spare
    // connection both rollups share it; with none (a busy pool is not waited for), or when a
    // connection cannot be had after all, they are read here after the rest.
    auto fetch = [&db, &agency_id, window](RollupParts parts) {
      return std::async(std::launch::async, [&db, &agency_id, window, parts] {
        return db.TransactForAgency(agency_id, [&](pqxx::work& tx) -> absl::StatusOr<RollupRows> {
          return FetchRollupRows(tx, window, parts);
        });
      });
    };
    const int spare = db.Spare();
    if (spare >= 2) {
      contact_days = fetch(RollupParts::kContactDays);
      wellbeing = fetch(RollupParts::kWellbeing);
    } else if (spare == 1) {
      contact_days = fetch(RollupParts::kBoth);
    }
    pathways = KnownPathways(tx);
    programs = KnownPrograms(tx);
    if (!programs.empty()) pairs = ProgramPathwayScopes(tx);
    if (!contact_days.valid()) return LoadFacts(tx, window, now);
    return LoadFacts(tx, window, now, [&]() -> absl::StatusOr<RollupRows> {
      absl::StatusOr<RollupRows> rows = contact_days.get();
      if (!wellbeing.valid() || !rows.ok()) return rows;
      absl::StatusOr<RollupRows> more = wellbeing.get();
      if (!more.ok()) return more.status();
      rows->wellbeing = std::move(more->wellbeing);
      return rows;
    });
  });
  if (!facts.ok()) return facts.status();
  if (!program_id.empty() &&
      std::find(programs.begin(), programs.end(), program_id) == programs.end()) {
    return absl::NotFoundError("program_id is not among the agency's known programs");
  }
  if (!pathway_key.empty() &&
      std::find(pathways.begin(), pathways.end(), pathway_key) == pathways.end()) {
    return absl::NotFoundError("pathway_key is not among the agency's known pathways");
  }

  // Every scope, suppressed together: the agency, each pathway, and when the agency has programs
  // each program and each (program, pathway) its enrollments have. Enrollments without a program
  // form a program scope of their own that no request selects, so that the programs add up to the
  // agency (and its cells are protected like any other).
  std::vector<ScopeKey> scopes = {{}};
  for (const std::string& w : pathways) scopes.push_back({"", w});
  std::vector<std::string> program_scopes = programs;
  const bool without_program = std::any_of(
      pairs.begin(), pairs.end(), [](const ScopeKey& k) { return k.program == kWithoutProgram; });
  if (without_program) program_scopes.push_back(kWithoutProgram);
  for (const std::string& p : program_scopes) scopes.push_back({p, ""});
  scopes.insert(scopes.end(), pairs.begin(), pairs.end());
  auto scope_of = [&](const ScopeKey& key) {
    return static_cast<size_t>(std::find(scopes.begin(), scopes.end(), key) - scopes.begin());
  };

  std::vector<ComputedCell> cells;
  std::vector<AdditiveGroup> groups;
  std::vector<int> scope_base;
  std::vector<std::vector<ComputedCell>> computed = ComputeScopes(*facts, scopes);
  for (std::vector<ComputedCell>& scope_cells : computed) {
    const int base = static_cast<int>(cells.size());
    scope_base.push_back(base);
    ScopeGroups(scope_cells, base, groups);
    for (ComputedCell& c : scope_cells) cells.push_back(std::move(c));
  }
  // Enrollment-tied measures add up exactly over a partition of a scope's enrollments: the
  // agency over its pathways and over its programs, a program over its pathways, a pathway over
  // the programs.
  const size_t per_scope = cells.size() / scopes.size();
  std::vector<std::pair<size_t, std::vector<size_t>>> partitions;
  auto add_partition = [&](const ScopeKey& total, auto&& is_part) {
    std::vector<size_t> parts;
    for (size_t s = 0; s < scopes.size(); ++s) {
      if (is_part(scopes[s])) parts.push_back(s);
    }
    if (!parts.empty()) partitions.push_back({scope_of(total), std::move(parts)});
  };
  add_partition({}, [](const ScopeKey& k) { return k.program.empty() && !k.pathway.empty(); });
  add_partition({}, [](const ScopeKey& k) { return !k.program.empty() && k.pathway.empty(); });
  for (const std::string& p : program_scopes) {
    add_partition({p, ""}, [&](const ScopeKey& k) { return k.program == p && !k.pathway.empty(); });
  }
  if (!pairs.empty()) {
    for (const std::string& w : pathways) {
      add_partition({"", w},
                    [&](const ScopeKey& k) { return !k.program.empty() && k.pathway == w; });
    }
  }
  if (scopes.size() > 1) {
    std::vector<ComputedCell> first(cells.begin(), cells.begin() + static_cast<long>(per_scope));
    const auto index = FirstCells(first);
    for (v1::Measure m : {v1::MEASURE_ENROLLMENTS_STARTED, v1::MEASURE_ENGAGEMENT_AFTER_INTAKE,
                          v1::MEASURE_MISSED_CONTACT_RECONNECTION, v1::MEASURE_LOST_TO_FOLLOW_UP}) {
      for (const auto& [total, parts] : partitions) {
        AdditiveGroup g{scope_base[total] + index.at(m), {}};
        for (size_t s : parts) g.parts.push_back(scope_base[s] + index.at(m));
        groups.push_back(g);
      }
    }
  }
  std::vector<SuppressionCell> suppression(cells.size());
  for (size_t i = 0; i < cells.size(); ++i) {
    suppression[i] = {cells[i].people_groups, cells[i].people, cells[i].shared_key,
                      cells[i].unavailable};
  }
  Suppress(suppression, groups, min_cell_size);

  const size_t scope_index = scope_of({program_id, pathway_key});
  if (scope_index == scopes.size()) {
    // A known program and a known pathway that no enrollment has together: nobody to count.
    return absl::NotFoundError("no enrollment of the agency has this program and pathway");
  }
  report.set_agency_id(agency_id);
  *report.mutable_period() = period;
  *report.mutable_period_range()->mutable_start_time() = ToProtoTimestamp(start);
  *report.mutable_period_range()->mutable_end_time() = ToProtoTimestamp(end);
  report.set_time_zone(zone_name);
  report.set_period_ended(now >= end);
  report.set_program_id(program_id);
  report.set_pathway_key(pathway_key);
  report.set_min_cell_size(min_cell_size);
  report.set_definitions_version(kDefinitionsVersion);
  *report.mutable_generated_at() = ToProtoTimestamp(now);
  for (size_t i = 0; i < per_scope; ++i) {
    const size_t at = scope_index * per_scope + i;
    ToReportCell(cells[at], suppression[at].suppressed, *report.add_cells());
  }
  for (const std::string& p : programs) report.add_program_ids(p);
  for (const std::string& p : pathways) report.add_pathway_keys(p);
  return absl::OkStatus();
}

absl::Status EvaluationService::BuildReport(const std::string& agency_id,
                                            const v1::ReportPeriod& period,
                                            const std::string& program_id,
                                            const std::string& pathway_key,
                                            v1::ProgramReport& report) {
  auto st = BuildProgramReport(context_.db, agency_id, period, program_id, pathway_key,
                               options_.min_cell_size, now_(), report);
  if (!st.ok()) return st;
  std::optional<absl::Time> as_of;
  for (Source& s : sources_) {
    if (s.consumer == nullptr) continue;
    std::lock_guard<std::mutex> lock(s.tracker->mu);
    std::optional<absl::Time> t =
        s.tracker->behind_since ? s.tracker->behind_since : s.tracker->caught_up_at;
    if (!t) t = absl::UnixEpoch();
    if (!as_of || *t < *as_of) as_of = t;
  }
  if (as_of) *report.mutable_data_as_of() = ToProtoTimestamp(*as_of);
  return absl::OkStatus();
}

namespace {

template <typename Request>
absl::Status ValidateReportRequest(const Request& r, absl::Time now) {
  absl::Time start, end;
  std::vector<FieldViolation> violations;
  // The agency's zone is read with the report; here the current month is the latest one anywhere.
  const absl::TimeZone earliest_zone = absl::FixedTimeZone(14 * 3600);
  auto period = ResolvePeriod(&r.period(), r.has_period(), now, earliest_zone, start, end);
  if (!period.ok()) {
    for (const FieldViolation& v : FieldViolations(period)) violations.push_back(v);
  }
  if (!r.program_id().empty() && !IsProgramId(r.program_id())) {
    violations.push_back({"program_id", "1 to 64 characters of [A-Za-z0-9_.:-]"});
  }
  if (!r.pathway_key().empty() && !IsPathwayKey(r.pathway_key())) {
    violations.push_back(
        {"pathway_key", "a lower-case letter, then up to 62 lower-case letters, digits or _"});
  }
  if (!violations.empty()) return InvalidArgument("invalid report request", violations);
  return absl::OkStatus();
}

}  // namespace

grpc::Status EvaluationService::GetProgramReport(grpc::ServerContext* context,
                                                 const v1::GetProgramReportRequest* request,
                                                 v1::GetProgramReportResponse* response) {
  auto caller = authorizer_.Authorize(*context, "GetProgramReport");
  if (!caller.ok()) return ToGrpc(caller.status());
  if (auto st = ValidateReportRequest(*request, now_()); !st.ok()) return ToGrpc(st);
  return ToGrpc(BuildReport(caller->agency_id, request->period(), request->program_id(),
                            request->pathway_key(), *response->mutable_report()));
}

grpc::Status EvaluationService::ExportReport(grpc::ServerContext* context,
                                             const v1::ExportReportRequest* request,
                                             grpc::ServerWriter<v1::ExportReportResponse>* writer) {
  auto caller = authorizer_.Authorize(*context, "ExportReport");
  if (!caller.ok()) return ToGrpc(caller.status());
  if (auto st = ValidateReportRequest(*request, now_()); !st.ok()) return ToGrpc(st);
  v1::ProgramReport report;
  if (auto st = BuildReport(caller->agency_id, request->period(), request->program_id(),
                            request->pathway_key(), report);
      !st.ok()) {
    return ToGrpc(st);
  }
  v1::ExportReportResponse row;
  row.set_csv_row(CsvHeader());
  if (!writer->Write(row)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  for (const v1::ReportCell& cell : report.cells()) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    if (context_.stopping.stopped()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
    }
    row.set_csv_row(CsvRow(report, cell));
    if (!writer->Write(row)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }
  return grpc::Status::OK;
}

grpc::Status EvaluationService::ListMeasureDefinitions(
    grpc::ServerContext* context, const v1::ListMeasureDefinitionsRequest* request,
    v1::ListMeasureDefinitionsResponse* response) {
  auto caller = authorizer_.Authorize(*context, "ListMeasureDefinitions");
  if (!caller.ok()) return ToGrpc(caller.status());
  auto size = ResolvePageSize(request->page_size());
  if (!size.ok()) return ToGrpc(size.status());
  auto cursor = DecodePageToken(kDefinitionsList, request->page_token());
  if (!cursor.ok()) return ToGrpc(cursor.status());
  size_t offset = 0;
  if (!cursor->empty() && !absl::SimpleAtoi(*cursor, &offset)) {
    return ToGrpc(InvalidArgument("page_token is not valid", {{"page_token", "not issued here"}}));
  }
  const auto& measures = Measures();
  const size_t end = std::min(measures.size(), offset + static_cast<size_t>(*size));
  for (size_t i = offset; i < end; ++i) *response->add_definitions() = DefinitionOf(measures[i]);
  response->set_definitions_version(kDefinitionsVersion);
  if (end < measures.size()) {
    response->set_next_page_token(EncodePageToken(kDefinitionsList, absl::StrCat(end)));
  }
  return grpc::Status::OK;
}

grpc::Status EvaluationService::GetPipelineStatus(grpc::ServerContext* context,
                                                  const v1::GetPipelineStatusRequest* request,
                                                  v1::GetPipelineStatusResponse* response) {
  (void)request;
  auto caller = authorizer_.Authorize(*context, "GetPipelineStatus");
  if (!caller.ok()) return ToGrpc(caller.status());
  std::map<std::string, std::pair<int64_t, std::optional<int64_t>>> stored;
  auto read = context_.db.Transact([&](pqxx::work& tx) -> absl::Status {
    for (const auto& row : tx.exec("SELECT source, position, " PEERPATH_SQL_MICROS(
             "updated_at") " FROM consumer_positions")) {
      stored[row[0].as<std::string>()] = {
          row[1].as<int64_t>(),
          row[1].as<int64_t>() > 0 ? std::optional<int64_t>(row[2].as<int64_t>()) : std::nullopt};
    }
    return absl::OkStatus();
  });
  if (!read.ok()) return ToGrpc(read);
  const absl::Time now = now_();
  for (Source& s : sources_) {
    v1::EventSourceStatus* out = response->add_sources();
    out->set_source(s.source);
    out->set_service_name(s.service_name);
    const auto it = stored.find(s.name);
    const int64_t applied = it == stored.end() ? 0 : it->second.first;
    out->set_last_applied_position(applied);
    if (it != stored.end() && it->second.second) {
      *out->mutable_last_applied_at() = ToProtoTimestamp(absl::FromUnixMicros(*it->second.second));
    }
    std::lock_guard<std::mutex> lock(s.tracker->mu);
    const SourceTracker& t = *s.tracker;
    out->set_state(!t.connected ? v1::CONSUMER_STATE_CONNECTING
                   : t.blocked  ? v1::CONSUMER_STATE_BLOCKED
                                : v1::CONSUMER_STATE_STREAMING);
    out->set_head_position(t.head);
    if (t.head_observed_at)
      *out->mutable_head_observed_at() = ToProtoTimestamp(*t.head_observed_at);
    const int64_t behind = std::max<int64_t>(0, t.head - applied);
    out->set_events_behind(behind);
    const absl::Duration lag =
        behind > 0 && t.behind_since ? now - *t.behind_since : absl::ZeroDuration();
    out->mutable_time_behind()->set_seconds(absl::ToInt64Seconds(lag));
    out->set_last_error_code(t.last_error_code);
    if (t.last_error_at) *out->mutable_last_error_at() = ToProtoTimestamp(*t.last_error_at);
  }
  *response->mutable_generated_at() = ToProtoTimestamp(now);
  return grpc::Status::OK;
}

}  // namespace peerpath::evaluation
