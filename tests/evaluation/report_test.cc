// The evaluation read models and reports against a real PostgreSQL: a fixed synthetic program
// (participants with and without peer support, county clients outside the program, known
// outcomes) is fed through the same apply functions the event consumers call, and the report
// values computed by hand below must come out exactly, suppressed exactly where the rules say.
// The same events delivered twice, in reverse or shuffled order, and a replay after emptying the
// read models give the same report.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "absl/strings/str_format.h"
#include "common/event_consumer.h"
#include "common/time_util.h"
#include "peerpath/checkin/v1/events.pb.h"
#include "peerpath/consent/v1/events.pb.h"
#include "peerpath/escalation/v1/events.pb.h"
#include "peerpath/matching/v1/events.pb.h"
#include "services/evaluation/evaluation_service.h"
#include "services/evaluation/read_models.h"
#include "services/evaluation/report_store.h"
#include "tests/support/log_fetcher.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

namespace ev = peerpath::evaluation;
namespace cv = peerpath::checkin::v1;
namespace mv = peerpath::matching::v1;
namespace xv = peerpath::escalation::v1;

absl::Time At(int month, int day, int hour = 10, int minute = 0) {
  return absl::FromCivil(absl::CivilSecond(2026, month, day, hour, minute, 0), absl::UTCTimeZone());
}

google::protobuf::Timestamp Ts(absl::Time t) { return ToProtoTimestamp(t); }

std::string Uuid(int kind, int i) { return absl::StrFormat("%08d-0000-4000-8000-%012d", kind, i); }

std::string Person(const char* prefix, int i) { return absl::StrFormat("%s%02d", prefix, i); }

enum class Source { kCheckIn, kMatching, kEscalation, kConsent };

struct Delivery {
  Source source;
  common::v1::Event event;
};

// The synthetic program of one agency: its events in producer order, and the county outcomes.
class Program {
 public:
  explicit Program(std::string agency) : agency_(std::move(agency)) {}

  template <typename Payload>
  void Emit(Source source, const Payload& payload) {
    Delivery d{source, {}};
    d.event.set_event_id(Uuid(99, ++events_));
    d.event.set_position(events_);
    d.event.set_agency_id(agency_);
    d.event.set_type(std::string(Payload::descriptor()->full_name()));
    d.event.mutable_payload()->PackFrom(payload);
    deliveries_.push_back(std::move(d));
  }

  void Enroll(const std::string& person, int i, const std::string& pathway, absl::Time at,
              const std::string& program = "") {
    cv::EnrollmentStartedEvent e;
    e.set_enrollment_id(Uuid(1, i));
    e.set_participant_id(person);
    e.set_pathway_key(pathway);
    e.set_program_id(program);
    e.set_pathway_version(1);
    *e.mutable_enrolled_at() = Ts(at);
    Emit(Source::kCheckIn, e);
  }

  void Match(const std::string& person, int i, const std::string& supporter, absl::Time at) {
    mv::MatchStartedEvent e;
    e.set_match_id(Uuid(2, i));
    e.set_match_request_id(Uuid(3, i));
    e.set_supporter_id(supporter);
    e.set_participant_id(person);
    *e.mutable_started_at() = Ts(at);
    Emit(Source::kMatching, e);
  }

  void FirstAppointment(const std::string& person, int i, const std::string& pathway, absl::Time at,
                        bool attended, bool peer_contact_before) {
    cv::AppointmentOutcomeRecordedEvent e;
    e.set_appointment_id(Uuid(4, i));
    e.set_enrollment_id(Uuid(1, i));
    e.set_participant_id(person);
    e.set_pathway_key(pathway);
    e.set_kind(cv::APPOINTMENT_KIND_FIRST_APPOINTMENT);
    *e.mutable_scheduled_at() = Ts(at);
    e.set_outcome(attended ? cv::APPOINTMENT_OUTCOME_ATTENDED : cv::APPOINTMENT_OUTCOME_MISSED);
    e.set_peer_contact_before(peer_contact_before);
    Emit(Source::kCheckIn, e);
  }

  void CheckIn(const std::string& person, int i, int n, const std::string& supporter, absl::Time at,
               int score) {
    cv::CheckInRecordedEvent e;
    e.set_check_in_id(Uuid(5, i * 10 + n));
    e.set_enrollment_id(Uuid(1, i));
    e.set_participant_id(person);
    e.set_supporter_id(supporter);
    e.set_pathway_key("early_engagement");
    e.set_wellbeing_score(score);
    *e.mutable_occurred_at() = Ts(at);
    Emit(Source::kCheckIn, e);
  }

  void Feedback(const std::string& person, int i, int n, int rating, absl::Time at) {
    cv::FeedbackRecordedEvent e;
    e.set_feedback_id(Uuid(7, i * 10 + n));
    e.set_enrollment_id(Uuid(1, i));
    e.set_participant_id(person);
    e.set_pathway_key("early_engagement");
    e.set_rating(rating);
    *e.mutable_given_at() = Ts(at);
    Emit(Source::kCheckIn, e);
  }

  void Outcome(const std::string& person, ev::v1::ServiceOutcomeKind kind, absl::Time at,
               ev::v1::DischargeSetting setting = ev::v1::DISCHARGE_SETTING_UNSPECIFIED) {
    outcomes_.push_back({person, kind, setting, at});
  }

  const std::string& agency() const { return agency_; }
  std::vector<Delivery>& deliveries() { return deliveries_; }
  // A county outcome as RecordServiceOutcome stores it.
  struct CountyOutcome {
    std::string participant_id;
    ev::v1::ServiceOutcomeKind kind;
    ev::v1::DischargeSetting setting;
    absl::Time occurred_at;
  };
  const std::vector<CountyOutcome>& outcomes() const { return outcomes_; }

 private:
  std::string agency_;
  int events_ = 0;
  std::vector<Delivery> deliveries_;
  std::vector<CountyOutcome> outcomes_;
};

// The main synthetic program (period: March 2026; every window has long completed).
//   w01..w30: early engagement, matched (with peer support) since 2026-02-20 with sup01..sup15.
//   n01..n25: early engagement, never matched.
//   s01..s25: step-down, started 2026-03-05.
//   c01..c24: county clients, never enrolled (outcomes only).
Program MainProgram() {
  Program p("agency-main");
  const std::string ee = "early_engagement";
  for (int i = 1; i <= 30; ++i) {
    p.Enroll(Person("w", i), i, ee, At(3, 2));
    p.Match(Person("w", i), i, Person("sup", (i + 1) / 2), At(2, 20));
    // First appointments: w01..w18 attended, w19..w30 missed; contact before for w01..w20.
    p.FirstAppointment(Person("w", i), i, ee, At(3, 10), i <= 18, i <= 20);
    // Wellbeing: w01..w12 improve 2->4, w13..w24 stay 3->3, w25..w30 decline 4->2.
    const int first = i <= 12 ? 2 : i <= 24 ? 3 : 4;
    const int last = i <= 12 ? 4 : i <= 24 ? 3 : 2;
    p.CheckIn(Person("w", i), i, 1, Person("sup", (i + 1) / 2), At(3, 3), first);
    p.CheckIn(Person("w", i), i, 2, Person("sup", (i + 1) / 2), At(3, 17), last);
  }
  // Person feedback in March: w01..w07 rate 5, w08..w11 4, w12..w14 2, and w01 again 3 (15
  // ratings of 14 people); w15's February rating and n01's April one are outside the period.
  for (int i = 1; i <= 14; ++i) {
    p.Feedback(Person("w", i), i, 1, i <= 7 ? 5 : i <= 11 ? 4 : 2, At(3, 18));
  }
  p.Feedback("w01", 1, 2, 3, At(3, 28));
  p.Feedback("w15", 15, 1, 1, At(2, 25));
  p.Feedback("n01", 101, 1, 1, At(4, 2));
  // w18's county system reports the same first appointment (same date) as missed: it wins.
  p.Outcome("w18", ev::v1::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_MISSED, At(3, 10, 9));
  for (int i = 1; i <= 25; ++i) {
    const int id = 100 + i;
    p.Enroll(Person("n", i), id, ee, At(3, 2));
    p.FirstAppointment(Person("n", i), id, ee, At(3, 10), i <= 12, false);
  }
  // Missed contacts for n01..n22 on 03-20; n01..n11 reconnect on 03-25; n23..n25 lost.
  for (int i = 1; i <= 25; ++i) {
    cv::EngagementStageChangedEvent e;
    e.set_enrollment_id(Uuid(1, 100 + i));
    e.set_participant_id(Person("n", i));
    e.set_pathway_key(ee);
    e.set_to_stage(i <= 22 ? cv::ENGAGEMENT_STAGE_MISSED_CONTACT
                           : cv::ENGAGEMENT_STAGE_LOST_TO_FOLLOW_UP);
    e.set_cause(i <= 22 ? cv::ENGAGEMENT_STAGE_CHANGE_CAUSE_FAILED_ATTEMPTS
                        : cv::ENGAGEMENT_STAGE_CHANGE_CAUSE_NO_CONTACT);
    *e.mutable_changed_at() = Ts(At(3, 20));
    p.Emit(Source::kCheckIn, e);
    if (i <= 11) {
      cv::ReconnectionRecordedEvent r;
      r.set_enrollment_id(Uuid(1, 100 + i));
      r.set_participant_id(Person("n", i));
      r.set_pathway_key(ee);
      r.set_check_in_id(Uuid(6, i));
      *r.mutable_reconnected_at() = Ts(At(3, 25));
      p.Emit(Source::kCheckIn, r);
    }
  }
  for (int i = 1; i <= 25; ++i) {
    p.Enroll(Person("s", i), 200 + i, "step_down", At(3, 5));
    // s01..s11: crisis contact 15 days after; s12, s13: 60 days after.
    if (i <= 11) p.Outcome(Person("s", i), ev::v1::SERVICE_OUTCOME_KIND_CRISIS_CONTACT, At(3, 20));
    if (i == 12 || i == 13) {
      p.Outcome(Person("s", i), ev::v1::SERVICE_OUTCOME_KIND_CRISIS_CONTACT, At(5, 4));
    }
  }
  // County clients: first appointments c01..c11 attended, c12..c24 missed.
  for (int i = 1; i <= 24; ++i) {
    p.Outcome(Person("c", i),
              i <= 11 ? ev::v1::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_ATTENDED
                      : ev::v1::SERVICE_OUTCOME_KIND_FIRST_APPOINTMENT_MISSED,
              At(3, 11));
  }
  // Crisis stabilization discharges on 03-15: w01..w22 (with) re-contact w01..w11 in 30 days;
  // c01..c22 (without) re-contact c01..c15 in 30 days.
  for (int i = 1; i <= 22; ++i) {
    for (const char* who : {"w", "c"}) {
      p.Outcome(Person(who, i), ev::v1::SERVICE_OUTCOME_KIND_DISCHARGE, At(3, 15),
                ev::v1::DISCHARGE_SETTING_CRISIS_STABILIZATION);
    }
    if (i <= 11) p.Outcome(Person("w", i), ev::v1::SERVICE_OUTCOME_KIND_CRISIS_CONTACT, At(4, 1));
    if (i <= 15) p.Outcome(Person("c", i), ev::v1::SERVICE_OUTCOME_KIND_CRISIS_CONTACT, At(4, 1));
  }
  // Concerns: w01..w12, immediate safety, critical, acknowledged after i minutes.
  for (int i = 1; i <= 12; ++i) {
    xv::ConcernOpenedEvent o;
    o.set_concern_id(Uuid(7, i));
    o.set_participant_id(Person("w", i));
    o.set_enrollment_id(Uuid(1, i));
    o.set_category(common::v1::CONCERN_CATEGORY_IMMEDIATE_SAFETY);
    o.set_severity(common::v1::CONCERN_SEVERITY_CRITICAL);
    *o.mutable_opened_at() = Ts(At(3, 12));
    p.Emit(Source::kEscalation, o);
    xv::ConcernAcknowledgedEvent a;
    a.set_concern_id(Uuid(7, i));
    a.set_category(o.category());
    a.set_severity(o.severity());
    *a.mutable_opened_at() = o.opened_at();
    *a.mutable_acknowledged_at() = Ts(At(3, 12, 10, i));
    p.Emit(Source::kEscalation, a);
  }
  // Emergency accesses: 11 people in March.
  for (int i = 1; i <= 11; ++i) {
    consent::v1::EmergencyAccessGrantedEvent g;
    g.set_emergency_access_id(Uuid(8, i));
    g.set_participant_id(Person("w", i));
    *g.mutable_granted_at() = Ts(At(3, 12, 11));
    p.Emit(Source::kConsent, g);
  }
  // Two-week follow-ups, participant side: w01..w20 rate (i % 5) + 1.
  for (int i = 1; i <= 20; ++i) {
    mv::FollowUpRecordedEvent f;
    f.set_follow_up_id(Uuid(9, i));
    f.set_match_id(Uuid(2, i));
    f.set_participant_id(Person("w", i));
    f.set_supporter_id(Person("sup", (i + 1) / 2));
    f.set_side(mv::FOLLOW_UP_SIDE_PARTICIPANT);
    f.set_rating(i % 5 + 1);
    *f.mutable_recorded_at() = Ts(At(3, 6));
    p.Emit(Source::kMatching, f);
  }
  return p;
}

// An agency in Los Angeles: UTC-8 until 8 March 2026, UTC-7 after. Its March runs from
// 2026-03-01T08:00Z to 2026-04-01T07:00Z. Its time zone is named in the middle of its log.
Program LosAngelesProgram() {
  Program p("agency-la");
  const std::string ee = "early_engagement";
  // f01..f12 enrolled at 05:00Z on 1 March: 28 February in Los Angeles. Each has a check-in at
  // 06:00Z on 1 March logged before the agency's zone was: it is dated 1 March (UTC then).
  for (int i = 1; i <= 12; ++i) {
    p.Enroll(Person("f", i), i, ee, At(3, 1, 5));
    p.Match(Person("f", i), i, Person("sup", i), At(2, 20));
    p.CheckIn(Person("f", i), i, 0, Person("sup", i), At(3, 1, 6), 3);
  }
  cv::ProgramPolicyChangedEvent policy;
  policy.set_time_zone("America/Los_Angeles");
  p.Emit(Source::kCheckIn, policy);
  // a01..a11 enrolled at 02:00Z on 1 April: still 31 March there.
  for (int i = 1; i <= 11; ++i) p.Enroll(Person("a", i), 100 + i, ee, At(4, 1, 2));
  // Then each supporter's contacts: 07:00Z on 1 March (28 February there), 10 March, and two at
  // 03:00Z and 03:30Z on 1 April (31 March there): with the one above, four in the local March
  // (three in the UTC one).
  for (int i = 1; i <= 12; ++i) {
    p.CheckIn(Person("f", i), i, 1, Person("sup", i), At(3, 1, 7), 3);
    p.CheckIn(Person("f", i), i, 2, Person("sup", i), At(3, 10), 3);
    p.CheckIn(Person("f", i), i, 3, Person("sup", i), At(4, 1, 3), 4);
    p.CheckIn(Person("f", i), i, 4, Person("sup", i), At(4, 1, 3, 30), 4);
  }
  return p;
}

class ReportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test_db_ = TestDatabase::Create();
    db_ = MigrateAndConnect(*test_db_, "evaluation");
  }

  void Apply(const Delivery& d) {
    auto st = db_->TransactForAgency(d.event.agency_id(), [&](pqxx::work& tx) {
      switch (d.source) {
        case Source::kCheckIn:
          return ev::ApplyCheckInEvent(tx, d.event);
        case Source::kMatching:
          return ev::ApplyMatchingEvent(tx, d.event);
        case Source::kEscalation:
          return ev::ApplyEscalationEvent(tx, d.event);
        case Source::kConsent:
          return ev::ApplyConsentEvent(tx, d.event);
      }
      return absl::InternalError("no source");
    });
    ASSERT_TRUE(st.ok()) << st << " " << d.event.type();
  }

  void RecordOutcomes(const Program& p) {
    for (const Program::CountyOutcome& o : p.outcomes()) {
      auto st = db_->TransactForAgency(p.agency(), [&](pqxx::work& tx) -> absl::Status {
        tx.exec_params(
            "INSERT INTO service_outcomes (agency_id, participant_id, kind, discharge_setting, "
            "occurred_at, reported_by) VALUES ($1, $2, $3, NULLIF($4, ''), "
            "to_timestamp($5::bigint), 'county')",
            p.agency(), o.participant_id, ev::OutcomeKindName(o.kind),
            std::string(o.setting == ev::v1::DISCHARGE_SETTING_CRISIS_STABILIZATION
                            ? "crisis_stabilization"
                        : o.setting == ev::v1::DISCHARGE_SETTING_INPATIENT_MENTAL_HEALTH
                            ? "inpatient_mental_health"
                            : ""),
            absl::ToUnixSeconds(o.occurred_at));
        return absl::OkStatus();
      });
      ASSERT_TRUE(st.ok()) << st;
    }
  }

  ev::v1::ProgramReport Report(const std::string& agency, const std::string& pathway = "",
                               ev::v1::PeriodKind kind = ev::v1::PERIOD_KIND_MONTH,
                               const std::string& program = "") {
    ev::v1::ProgramReport report;
    auto st = ProgramReport(agency, program, pathway, kind, report);
    EXPECT_TRUE(st.ok()) << st;
    return report;
  }

  absl::Status ProgramReport(const std::string& agency, const std::string& program,
                             const std::string& pathway, ev::v1::PeriodKind kind,
                             ev::v1::ProgramReport& report) {
    ev::v1::ReportPeriod period;
    period.set_kind(kind);
    period.mutable_start_date()->set_year(2026);
    period.mutable_start_date()->set_month(3);
    period.mutable_start_date()->set_day(1);
    return ev::BuildProgramReport(*db_, agency, period, program, pathway, 11, At(11, 1), report);
  }

  std::unique_ptr<TestDatabase> test_db_;
  std::unique_ptr<Database> db_;
};

const ev::v1::ReportCell& CellOf(const ev::v1::ProgramReport& report, const std::string& measure,
                                 int index = 0) {
  int seen = 0;
  for (const auto& cell : report.cells()) {
    if (cell.measure_id() == measure && seen++ == index) return cell;
  }
  ADD_FAILURE() << "no cell " << measure << "[" << index << "]";
  static const ev::v1::ReportCell none;
  return none;
}

void ExpectRate(const ev::v1::ReportCell& cell, int64_t numerator, int64_t denominator) {
  ASSERT_FALSE(cell.suppressed()) << cell.ShortDebugString();
  EXPECT_EQ(cell.rate().numerator(), numerator) << cell.measure_id();
  EXPECT_EQ(cell.rate().denominator(), denominator) << cell.measure_id();
}

void ExpectSuppressed(const ev::v1::ReportCell& cell) {
  EXPECT_TRUE(cell.suppressed()) << cell.ShortDebugString();
  EXPECT_EQ(cell.value_case(), ev::v1::ReportCell::VALUE_NOT_SET);
}

TEST_F(ReportTest, HandComputedValuesOfTheSyntheticProgram) {
  Program p = MainProgram();
  for (const Delivery& d : p.deliveries()) Apply(d);
  RecordOutcomes(p);
  const auto r = Report(p.agency());

  EXPECT_EQ(r.cells_size(), 79);
  EXPECT_EQ(r.pathway_keys_size(), 2);
  EXPECT_EQ(r.program_ids_size(), 0);
  EXPECT_EQ(r.time_zone(), "UTC");
  EXPECT_TRUE(r.period_ended());
  EXPECT_EQ(r.min_cell_size(), 11);

  EXPECT_EQ(CellOf(r, "enrollments_started").count().count(), 80);
  EXPECT_EQ(CellOf(r, "participants_served").count().count(), 80);
  // Check-in first appointments: 55, contact before for w01..w20.
  ExpectRate(CellOf(r, "engagement_after_intake"), 20, 55);
  // First-appointment attendance: with w01..w17 of 30 (w18: the county's "missed" wins); without
  // n01..n12 of 25 plus c01..c11 of 24 = 23 of 49; total 40 of 79.
  ExpectRate(CellOf(r, "first_appointment_attendance", 0), 40, 79);
  ExpectRate(CellOf(r, "first_appointment_attendance", 1), 17, 30);
  ExpectRate(CellOf(r, "first_appointment_attendance", 2), 23, 49);
  EXPECT_DOUBLE_EQ(CellOf(r, "first_appointment_attendance", 1).rate().rate(), 17.0 / 30);
  ExpectRate(CellOf(r, "missed_contact_reconnection"), 11, 22);
  // Lost to follow-up: 3 of 80 enrollments: 3 people in the numerator, suppressed.
  ExpectSuppressed(CellOf(r, "lost_to_follow_up"));
  ExpectRate(CellOf(r, "step_down_stability_30d"), 14, 25);
  ExpectRate(CellOf(r, "step_down_stability_90d"), 12, 25);
  // Crisis re-contact 30 days: with 11 of 22 (shown alone), without 15 of 22 (7 without a
  // re-contact: suppressed), so "with" is suppressed too (total minus with would give it).
  ExpectRate(CellOf(r, "crisis_recontact_30d", 0), 26, 44);
  ExpectSuppressed(CellOf(r, "crisis_recontact_30d", 1));
  ExpectSuppressed(CellOf(r, "crisis_recontact_30d", 2));
  // Nobody had an emergency visit or an inpatient discharge.
  for (const char* m :
       {"follow_up_after_emergency_visit_7d", "follow_up_after_hospitalization_30d"}) {
    for (int i = 0; i < 3; ++i) ExpectSuppressed(CellOf(r, m, i));
  }
  // Concerns: 12 of 80 served per 100; every breakdown cell suppressed (only one category and
  // one severity hold people, and the total would give them back).
  const auto& concerns = CellOf(r, "concerns_raised", 0);
  ExpectRate(concerns, 12, 80);
  EXPECT_DOUBLE_EQ(concerns.rate().rate(), 15.0);
  for (int i = 1; i < 32; ++i) ExpectSuppressed(CellOf(r, "concerns_raised", i));
  // Time to acknowledge: 1..12 minutes; median rank 6 = 6 min, p90 rank 11 = 11 min.
  const auto& ack = CellOf(r, "time_to_acknowledge", 0);
  ASSERT_FALSE(ack.suppressed());
  EXPECT_EQ(ack.duration_summary().count(), 12);
  EXPECT_EQ(ack.duration_summary().median().seconds(), 360);
  EXPECT_EQ(ack.duration_summary().p90().seconds(), 660);
  for (int i = 1; i <= 3; ++i) ExpectSuppressed(CellOf(r, "time_to_acknowledge", i));
  // No breaches: nobody in the numerator.
  ExpectSuppressed(CellOf(r, "deadline_breaches", 0));
  EXPECT_EQ(CellOf(r, "emergency_accesses").count().count(), 11);
  // Ratings 2,3,4,5,1 four times: mean 3, median rank 10 = 3, p90 rank 18 = 5.
  const auto& satisfaction = CellOf(r, "match_satisfaction", 0);
  ASSERT_FALSE(satisfaction.suppressed());
  EXPECT_EQ(satisfaction.numeric_summary().count(), 20);
  EXPECT_DOUBLE_EQ(satisfaction.numeric_summary().mean(), 3.0);
  EXPECT_DOUBLE_EQ(satisfaction.numeric_summary().median(), 3.0);
  EXPECT_DOUBLE_EQ(satisfaction.numeric_summary().p90(), 5.0);
  ExpectSuppressed(CellOf(r, "match_satisfaction", 1));  // No supporter-side answers.
  ExpectSuppressed(CellOf(r, "rematch_rate"));           // No match started in March.
  // 15 supporters, 2 active matches each; 4 contacts each over 31 days.
  const auto& workload = CellOf(r, "supporter_active_matches");
  ASSERT_FALSE(workload.suppressed());
  EXPECT_EQ(workload.numeric_summary().count(), 15);
  EXPECT_DOUBLE_EQ(workload.numeric_summary().mean(), 2.0);
  const auto& contacts = CellOf(r, "supporter_contacts_per_week");
  ASSERT_FALSE(contacts.suppressed());
  EXPECT_DOUBLE_EQ(contacts.numeric_summary().median(), 4.0 / (31.0 / 7.0));
  ExpectSuppressed(CellOf(r, "supporter_wellbeing_flags"));
  // Wellbeing: 12 improved, 12 unchanged, 6 declined of 30. Declined is small, so one more
  // direction goes (improved: the first of the two smallest): only "unchanged" is shown.
  ExpectSuppressed(CellOf(r, "wellbeing_trend", 0));
  ExpectRate(CellOf(r, "wellbeing_trend", 1), 12, 30);
  ExpectSuppressed(CellOf(r, "wellbeing_trend", 2));
  // Ratings 2,2,2,3,4,4,4,4,5,5,5,5,5,5,5: mean 60/15, nearest-rank median the 8th, p90 the 14th.
  const auto& feedback = CellOf(r, "person_feedback");
  ASSERT_FALSE(feedback.suppressed()) << feedback.ShortDebugString();
  EXPECT_FALSE(feedback.unavailable());
  EXPECT_EQ(feedback.numeric_summary().count(), 15);
  EXPECT_DOUBLE_EQ(feedback.numeric_summary().mean(), 4.0);
  EXPECT_DOUBLE_EQ(feedback.numeric_summary().median(), 4.0);
  EXPECT_DOUBLE_EQ(feedback.numeric_summary().p90(), 5.0);
  ExpectSuppressed(CellOf(Report(p.agency(), "step_down"), "person_feedback"));

  // The early engagement pathway: its 55 people; county clients are not among them.
  const auto ee = Report(p.agency(), "early_engagement");
  EXPECT_EQ(CellOf(ee, "enrollments_started").count().count(), 55);
  ExpectRate(CellOf(ee, "first_appointment_attendance", 0), 29, 55);
  ExpectRate(CellOf(ee, "first_appointment_attendance", 1), 17, 30);
  ExpectRate(CellOf(ee, "first_appointment_attendance", 2), 12, 25);
  EXPECT_EQ(CellOf(Report(p.agency(), "step_down"), "enrollments_started").count().count(), 25);
}

// HEDIS FUM/FUH style follow-ups, where a peer support contact qualifies: an emergency visit's
// follow-up may be on its day, a discharge's only from the day after; a contact before the index
// event never counts.
TEST_F(ReportTest, FollowUpsAfterEmergencyVisitsAndDischargesCountPeerContactsInTheirWindows) {
  Program p("agency-follow-up");
  int n = 0;
  auto contact = [&](const std::string& person, int month, int day) {
    ++n;
    p.CheckIn(person, 1000 + n, 0, "sup01", At(month, day), 3);
  };
  for (int i = 1; i <= 44; ++i) {
    const std::string e = Person("e", i), h = Person("h", i);
    p.Outcome(e, ev::v1::SERVICE_OUTCOME_KIND_EMERGENCY_VISIT_MENTAL_ILLNESS, At(3, 10));
    p.Outcome(h, ev::v1::SERVICE_OUTCOME_KIND_DISCHARGE, At(3, 10),
              ev::v1::DISCHARGE_SETTING_INPATIENT_MENTAL_HEALTH);
    if (i <= 11) {  // Before (not counted), then within 7 days.
      contact(e, 3, 5);
      contact(e, 3, 12);
    } else if (i <= 22) {  // On the visit's day.
      contact(e, 3, 10);
    } else if (i <= 33) {  // 15 days after: 30-day only.
      contact(e, 3, 25);
    } else {  // Only before.
      contact(e, 3, 5);
    }
    if (i <= 11) {  // On the discharge day (not counted), then 2 days after.
      contact(h, 3, 10);
      contact(h, 3, 12);
    } else if (i <= 22) {  // Only on the discharge day.
      contact(h, 3, 10);
    } else if (i <= 33) {  // 10 days after: 30-day only.
      contact(h, 3, 20);
    } else {  // The day after.
      contact(h, 3, 11);
    }
  }
  for (const Delivery& d : p.deliveries()) Apply(d);
  RecordOutcomes(p);
  const auto r = Report(p.agency());
  ExpectRate(CellOf(r, "follow_up_after_emergency_visit_7d"), 22, 44);
  ExpectRate(CellOf(r, "follow_up_after_emergency_visit_30d"), 33, 44);
  ExpectRate(CellOf(r, "follow_up_after_hospitalization_7d"), 22, 44);
  ExpectRate(CellOf(r, "follow_up_after_hospitalization_30d"), 33, 44);
}

TEST_F(ReportTest, DuplicateAndOutOfOrderDeliveryChangeNothing) {
  Program p = MainProgram();
  for (const Delivery& d : p.deliveries()) Apply(d);
  RecordOutcomes(p);
  const std::string live = Report(p.agency()).SerializeAsString();
  // Everything again, last first.
  for (auto it = p.deliveries().rbegin(); it != p.deliveries().rend(); ++it) Apply(*it);
  EXPECT_EQ(Report(p.agency()).SerializeAsString(), live);

  // A replay from an empty read model in a shuffled order (acknowledgements before openings,
  // check-ins before enrollments) builds the same report.
  auto reset = db_->Transact([](pqxx::work& tx) { return ev::ResetReadModels(tx); });
  ASSERT_TRUE(reset.ok()) << reset;
  EXPECT_NE(Report(p.agency()).SerializeAsString(), live);
  std::vector<Delivery> shuffled = p.deliveries();
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937(7));
  for (const Delivery& d : shuffled) Apply(d);
  EXPECT_EQ(Report(p.agency()).SerializeAsString(), live);
}

TEST_F(ReportTest, BatchedCheckInApplyEqualsOneByOne) {
  Program p = MainProgram();
  for (const Delivery& d : p.deliveries()) Apply(d);
  RecordOutcomes(p);
  const std::string live = Report(p.agency()).SerializeAsString();
  auto reset = db_->Transact([](pqxx::work& tx) { return ev::ResetReadModels(tx); });
  ASSERT_TRUE(reset.ok()) << reset;
  // Check-in events in pages of 7 (each twice), the other sources one by one.
  std::vector<const common::v1::Event*> page;
  auto flush = [&] {
    auto st = db_->TransactForAgency(
        p.agency(), [&](pqxx::work& tx) { return ev::ApplyCheckInBatch(tx, page); });
    ASSERT_TRUE(st.ok()) << st;
    page.clear();
  };
  for (int pass = 0; pass < 2; ++pass) {
    for (const Delivery& d : p.deliveries()) {
      if (d.source != Source::kCheckIn) {
        if (pass == 0) Apply(d);
        continue;
      }
      page.push_back(&d.event);
      if (page.size() == 7) flush();
    }
    flush();
  }
  EXPECT_EQ(Report(p.agency()).SerializeAsString(), live);
}

// A county's check-in log, where two agencies' events alternate, through the consumer as the
// service runs it (the batch handler, one run per agency of each page): each agency's report is
// the one its own events applied one by one give, the Los Angeles time zone named mid-page
// included (the contacts before it stay dated in UTC).
TEST_F(ReportTest, AgenciesInTurnThroughTheConsumerReportAsEachAlone) {
  Program main = MainProgram();
  Program la = LosAngelesProgram();
  for (Program* p : {&main, &la}) {
    for (const Delivery& d : p->deliveries()) Apply(d);
  }
  RecordOutcomes(main);
  const std::string main_alone = Report(main.agency()).SerializeAsString();
  const std::string la_alone = Report(la.agency()).SerializeAsString();
  EXPECT_EQ(Report(la.agency()).time_zone(), "America/Los_Angeles");
  auto reset = db_->Transact([](pqxx::work& tx) { return ev::ResetReadModels(tx); });
  ASSERT_TRUE(reset.ok()) << reset;

  // The other sources one by one; the check-in events of both agencies in turn, numbered anew.
  std::vector<common::v1::Event> log;
  std::vector<std::vector<const common::v1::Event*>> each(2);
  for (int i = 0; i < 2; ++i) {
    for (const Delivery& d : (i == 0 ? main : la).deliveries()) {
      if (d.source == Source::kCheckIn) {
        each[static_cast<size_t>(i)].push_back(&d.event);
      } else {
        Apply(d);
      }
    }
  }
  for (size_t k = 0; k < std::max(each[0].size(), each[1].size()); ++k) {
    for (const auto& events : each) {
      if (k >= events.size()) continue;
      log.push_back(*events[k]);
      log.back().set_position(static_cast<int64_t>(log.size()));
    }
  }
  ASSERT_LT(std::ssize(log), 500);  // One page: Los Angeles's policy event is inside its run.
  EventConsumer consumer(*db_, ev::CheckInConsumerOptions(), FetcherOver(log),
                         ev::ApplyCheckInEvent);
  for (int round = 0; round < 100; ++round) {
    auto applied = consumer.PollOnce();
    ASSERT_TRUE(applied.ok()) << applied.status();
    if (*consumer.Position() == std::ssize(log)) break;
  }
  ASSERT_EQ(*consumer.Position(), std::ssize(log));
  EXPECT_EQ(Report(main.agency()).SerializeAsString(), main_alone);
  EXPECT_EQ(Report(la.agency()).SerializeAsString(), la_alone);
  EXPECT_EQ(Report(la.agency()).time_zone(), "America/Los_Angeles");
}

TEST_F(ReportTest, TenIsSuppressedElevenIsShownAndTotalsDoNotGiveItBack) {
  // Agency A: 20 early engagement and 10 step-down enrollments. Agency B: 20 and 11.
  for (const auto& [agency, step_down] :
       {std::pair<std::string, int>{"agency-a", 10}, std::pair<std::string, int>{"agency-b", 11}}) {
    Program p(agency);
    for (int i = 1; i <= 20; ++i) p.Enroll(Person("e", i), i, "early_engagement", At(3, 2));
    for (int i = 1; i <= step_down; ++i) p.Enroll(Person("s", i), 100 + i, "step_down", At(3, 3));
    for (const Delivery& d : p.deliveries()) Apply(d);
  }
  const auto a = Report("agency-a");
  EXPECT_EQ(CellOf(a, "enrollments_started").count().count(), 30);
  ExpectSuppressed(CellOf(Report("agency-a", "step_down"), "enrollments_started"));
  // 30 - 20 would give the step-down 10 back: the early engagement cell is suppressed too.
  ExpectSuppressed(CellOf(Report("agency-a", "early_engagement"), "enrollments_started"));

  EXPECT_EQ(CellOf(Report("agency-b"), "enrollments_started").count().count(), 31);
  EXPECT_EQ(CellOf(Report("agency-b", "step_down"), "enrollments_started").count().count(), 11);
  EXPECT_EQ(CellOf(Report("agency-b", "early_engagement"), "enrollments_started").count().count(),
            20);
  // Another agency's data never shows: agency A's report counts none of B's enrollments.
  EXPECT_EQ(CellOf(a, "participants_served").count().count(), 30);
}

TEST_F(ReportTest, ProgramScopesCountTheirEnrollmentsAndAreSuppressedWithTheOthers) {
  // Agency P: program east 15 early engagement + 12 step-down, program west 14 early engagement,
  // 11 early engagement enrollments without a program. Agency Q: east 27, west only 10.
  for (const auto& [agency, west] :
       {std::pair<std::string, int>{"agency-p", 14}, std::pair<std::string, int>{"agency-q", 10}}) {
    Program p(agency);
    int i = 0;
    for (int n = 0; n < 15; ++n, ++i)
      p.Enroll(Person("e", i), i, "early_engagement", At(3, 2), "east");
    for (int n = 0; n < 12; ++n, ++i) p.Enroll(Person("e", i), i, "step_down", At(3, 2), "east");
    for (int n = 0; n < west; ++n, ++i)
      p.Enroll(Person("w", i), i, "early_engagement", At(3, 3), "west");
    for (int n = 0; n < 11; ++n, ++i) p.Enroll(Person("n", i), i, "early_engagement", At(3, 4));
    for (const Delivery& d : p.deliveries()) Apply(d);
  }
  const auto month = ev::v1::PERIOD_KIND_MONTH;
  const auto agency = Report("agency-p");
  EXPECT_EQ(CellOf(agency, "enrollments_started").count().count(), 52);
  ASSERT_EQ(agency.program_ids_size(), 2);
  EXPECT_EQ(agency.program_ids(0), "east");
  EXPECT_EQ(agency.program_ids(1), "west");
  const auto east = Report("agency-p", "", month, "east");
  EXPECT_EQ(east.program_id(), "east");
  EXPECT_EQ(CellOf(east, "enrollments_started").count().count(), 27);
  EXPECT_EQ(CellOf(east, "participants_served").count().count(), 27);
  EXPECT_EQ(CellOf(Report("agency-p", "", month, "west"), "enrollments_started").count().count(),
            14);
  EXPECT_EQ(
      CellOf(Report("agency-p", "step_down", month, "east"), "enrollments_started").count().count(),
      12);
  EXPECT_EQ(CellOf(Report("agency-p", "early_engagement", month, "east"), "enrollments_started")
                .count()
                .count(),
            15);
  // The pathway scope still holds every program's enrollments and those without one.
  EXPECT_EQ(CellOf(Report("agency-p", "early_engagement"), "enrollments_started").count().count(),
            40);
  // A known program and a known pathway that no enrollment has together.
  ev::v1::ProgramReport none;
  EXPECT_EQ(ProgramReport("agency-p", "west", "step_down", month, none).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ProgramReport("agency-p", "north", "", month, none).code(),
            absl::StatusCode::kNotFound);

  // Agency Q's west (10) is suppressed, in the program scope and in its only pathway; east is
  // shown, and west cannot be computed back: the enrollments without a program are no scope a
  // request can select.
  ExpectSuppressed(CellOf(Report("agency-q", "", month, "west"), "enrollments_started"));
  ExpectSuppressed(
      CellOf(Report("agency-q", "early_engagement", month, "west"), "enrollments_started"));
  EXPECT_EQ(CellOf(Report("agency-q", "", month, "east"), "enrollments_started").count().count(),
            27);
  EXPECT_EQ(CellOf(Report("agency-q"), "enrollments_started").count().count(), 48);
}

// Appointments, stage changes, concerns and feedback take their program (and a concern its
// pathway) from their enrollment, also when that enrollment ended before the period (so is not
// among the period's enrollments the report reads), and not when it is unknown or another
// agency's.
TEST_F(ReportTest, FactsTakeTheirEnrollmentsProgramAlsoWhenItEndedBeforeThePeriod) {
  Program p("agency-l");
  auto concern = [&](const std::string& person, int i, const std::string& enrollment) {
    xv::ConcernOpenedEvent o;
    o.set_concern_id(Uuid(7, i));
    o.set_participant_id(person);
    o.set_enrollment_id(enrollment);
    o.set_category(common::v1::CONCERN_CATEGORY_CLINICAL_WORSENING);
    o.set_severity(common::v1::CONCERN_SEVERITY_URGENT);
    *o.mutable_opened_at() = Ts(At(3, 12));
    p.Emit(Source::kEscalation, o);
  };
  // e00..e23 in program east, served in March; e00..e11 raise a concern and rate their support 5.
  for (int i = 0; i < 24; ++i) {
    p.Enroll(Person("e", i), i, "early_engagement", At(3, 2), "east");
    if (i < 12) {
      concern(Person("e", i), i, Uuid(1, i));
      p.Feedback(Person("e", i), i, 1, 5, At(3, 18));
    }
  }
  // x00..x11: enrolled in east in January, ended in February; in March each still has a concern
  // and a rating of 1 tied to that enrollment.
  for (int i = 0; i < 12; ++i) {
    p.Enroll(Person("x", i), 50 + i, "early_engagement", At(1, 5), "east");
    cv::EnrollmentEndedEvent ended;
    ended.set_enrollment_id(Uuid(1, 50 + i));
    ended.set_participant_id(Person("x", i));
    ended.set_pathway_key("early_engagement");
    ended.set_pathway_version(1);
    *ended.mutable_enrolled_at() = Ts(At(1, 5));
    *ended.mutable_ended_at() = Ts(At(2, 20));
    p.Emit(Source::kCheckIn, ended);
    concern(Person("x", i), 50 + i, Uuid(1, 50 + i));
    p.Feedback(Person("x", i), 50 + i, 1, 1, At(3, 18));
  }
  // u00..u11: concerns naming an enrollment this agency does not have: u00..u05 one never heard
  // of, u06..u11 one of another agency's east program. No program, no pathway.
  Program other("agency-other");
  for (int i = 6; i < 12; ++i)
    other.Enroll(Person("u", i), 90 + i, "early_engagement", At(3, 2), "east");
  for (int i = 0; i < 12; ++i) concern(Person("u", i), 90 + i, Uuid(1, 90 + i));
  for (const Delivery& d : other.deliveries()) Apply(d);
  for (const Delivery& d : p.deliveries()) Apply(d);

  const auto month = ev::v1::PERIOD_KIND_MONTH;
  const auto agency = Report("agency-l");
  ExpectRate(CellOf(agency, "concerns_raised", 0), 36, 24);
  EXPECT_EQ(CellOf(agency, "person_feedback").numeric_summary().count(), 24);
  for (const auto& east : {Report("agency-l", "", month, "east"),
                           Report("agency-l", "early_engagement", month, "east")}) {
    EXPECT_EQ(CellOf(east, "participants_served").count().count(), 24);
    // e's and x's concerns (x's through their ended enrollment), not u's.
    ExpectRate(CellOf(east, "concerns_raised", 0), 24, 24);
    const auto& feedback = CellOf(east, "person_feedback");
    ASSERT_FALSE(feedback.suppressed()) << feedback.ShortDebugString();
    EXPECT_EQ(feedback.numeric_summary().count(), 24);
    EXPECT_DOUBLE_EQ(feedback.numeric_summary().mean(), 3.0);
  }
}

TEST_F(ReportTest, PeriodsAndLocalDaysAreTheAgencysTimeZone) {
  Program p = LosAngelesProgram();
  for (const Delivery& d : p.deliveries()) Apply(d);

  const ev::v1::ProgramReport r = Report(p.agency());
  EXPECT_EQ(r.time_zone(), "America/Los_Angeles");
  EXPECT_EQ(FromProtoTimestamp(r.period_range().start_time()), At(3, 1, 8));
  EXPECT_EQ(FromProtoTimestamp(r.period_range().end_time()), At(4, 1, 7));
  EXPECT_EQ(CellOf(r, "enrollments_started").count().count(), 11);
  EXPECT_EQ(CellOf(r, "participants_served").count().count(), 23);
  const auto& contacts = CellOf(r, "supporter_contacts_per_week");
  ASSERT_FALSE(contacts.suppressed()) << contacts.ShortDebugString();
  EXPECT_DOUBLE_EQ(contacts.numeric_summary().median(), 4.0 / (31.0 / 7.0));

  // The same log applied in one batch dates every contact the same way (the contacts logged
  // before the zone was named are dated before it is stored).
  auto reset = db_->Transact([](pqxx::work& tx) { return ev::ResetReadModels(tx); });
  ASSERT_TRUE(reset.ok()) << reset;
  std::vector<const common::v1::Event*> page;
  for (const Delivery& d : p.deliveries()) {
    if (d.source == Source::kCheckIn) {
      page.push_back(&d.event);
    } else {
      Apply(d);
    }
  }
  auto batch = db_->TransactForAgency(
      p.agency(), [&](pqxx::work& tx) { return ev::ApplyCheckInBatch(tx, page); });
  ASSERT_TRUE(batch.ok()) << batch;
  EXPECT_EQ(Report(p.agency()).SerializeAsString(), r.SerializeAsString());

  // An older policy delivered late does not bring its zone back; an unknown zone is refused.
  Delivery late = p.deliveries().front();
  cv::ProgramPolicyChangedEvent policy;
  policy.set_time_zone("Asia/Tokyo");
  late.source = Source::kCheckIn;
  late.event.set_event_id(Uuid(98, 1));
  late.event.set_position(0);
  late.event.set_type("peerpath.checkin.v1.ProgramPolicyChangedEvent");
  late.event.mutable_payload()->PackFrom(policy);
  Apply(late);
  EXPECT_EQ(Report(p.agency()).time_zone(), "America/Los_Angeles");
  policy.set_time_zone("Mars/Olympus");
  late.event.set_event_id(Uuid(98, 2));
  late.event.set_position(1000);
  late.event.mutable_payload()->PackFrom(policy);
  auto st = db_->TransactForAgency(
      p.agency(), [&](pqxx::work& tx) { return ev::ApplyCheckInEvent(tx, late.event); });
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);

  // Without a policy event, the zone an enrollment carries is the agency's (UTC before any).
  EXPECT_EQ(Report("agency-ny").time_zone(), "UTC");
  Program ny("agency-ny");
  cv::EnrollmentStartedEvent started;
  started.set_enrollment_id(Uuid(1, 1));
  started.set_participant_id("p1");
  started.set_pathway_key("early_engagement");
  started.set_time_zone("America/New_York");
  *started.mutable_enrolled_at() = Ts(At(3, 2));
  ny.Emit(Source::kCheckIn, started);
  for (const Delivery& d : ny.deliveries()) Apply(d);
  const ev::v1::ProgramReport n = Report("agency-ny");
  EXPECT_EQ(n.time_zone(), "America/New_York");
  EXPECT_EQ(FromProtoTimestamp(n.period_range().start_time()), At(3, 1, 5));
}

TEST_F(ReportTest, UnknownFiltersAndBadPeriodsAreRefused) {
  ev::v1::ReportPeriod period;
  period.set_kind(ev::v1::PERIOD_KIND_MONTH);
  period.mutable_start_date()->set_year(2026);
  period.mutable_start_date()->set_month(3);
  period.mutable_start_date()->set_day(2);
  ev::v1::ProgramReport report;
  auto st = ev::BuildProgramReport(*db_, "agency-x", period, "", "", 11, At(11, 1), report);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  period.mutable_start_date()->set_day(1);
  st = ev::BuildProgramReport(*db_, "agency-x", period, "", "crisis_transition", 11, At(11, 1),
                              report);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  st = ev::BuildProgramReport(*db_, "agency-x", period, "prog-1", "", 11, At(11, 1), report);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
}

TEST_F(ReportTest, MalformedEventsAreSetAsideNotApplied) {
  common::v1::Event event;
  event.set_event_id(Uuid(99, 1));
  event.set_agency_id("agency-x");
  event.set_type("peerpath.checkin.v1.EnrollmentStartedEvent");
  cv::EnrollmentStartedEvent bad;
  bad.set_enrollment_id("not-a-uuid");
  bad.set_participant_id("p1");
  bad.set_pathway_key("early_engagement");
  event.mutable_payload()->PackFrom(bad);
  auto st = db_->TransactForAgency(
      "agency-x", [&](pqxx::work& tx) { return ev::ApplyCheckInEvent(tx, event); });
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace peerpath::testing
