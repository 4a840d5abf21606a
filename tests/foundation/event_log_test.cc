// The event log against the real PostgreSQL, as the service's own role: the outbox commits with
// the change, positions never let a late commit be skipped, and a consumer applies each event
// exactly once and resumes where it stopped.
#include "common/event_log.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "common/event_consumer.h"
#include "peerpath/common/v1/common.pb.h"
#include "tests/support/migrated_schema.h"
#include "tests/support/service_process.h"
#include "tests/support/test_database.h"

namespace peerpath::testing {
namespace {

using peerpath::common::v1::Date;
using peerpath::common::v1::Event;

Date Payload(int day) {
  Date d;
  d.set_year(2026);
  d.set_month(1);
  d.set_day(day);
  return d;
}

int DayOf(const Event& event) {
  Date d;
  EXPECT_EQ(event.payload().type_url(), "type.googleapis.com/peerpath.common.v1.Date");
  EXPECT_TRUE(event.payload().UnpackTo(&d));
  return d.day();
}

class EventLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TestDatabase::Create();
    MigrateAndConnect(*db_, "consent");
    // The effect a consumer applies: a tenant table like any service's, covered by the runner's
    // next pass.
    db_->AdminQuery(
        "CREATE TABLE consent.applied (agency_id text NOT NULL, event_id text PRIMARY KEY, "
        "day int NOT NULL);"
        "ALTER TABLE consent.applied OWNER TO peerpath_consent_owner");
    database_ = MigrateAndConnect(*db_, "consent");
    log_ = std::make_unique<EventLog>(*database_);
  }

  absl::Status Append(const std::string& agency, int day) {
    return database_->TransactForAgency(agency, [&](pqxx::work& tx) {
      return AppendEvent(tx, agency, "aggregate-" + std::to_string(day), Payload(day));
    });
  }

  std::vector<int> Days(const EventPage& page) {
    std::vector<int> days;
    for (const Event& e : page.events) days.push_back(DayOf(e));
    return days;
  }

  EventPage ReadAll(int64_t after = 0) {
    auto page = log_->Read(after, 1000, {});
    EXPECT_TRUE(page.ok()) << page.status();
    return page.value_or(EventPage{});
  }

  // The effect every consumer here applies: the event recorded in `applied`, under its agency.
  static absl::Status Record(pqxx::work& tx, const Event& event) {
    tx.exec_params0("INSERT INTO applied (agency_id, event_id, day) VALUES ($1, $2, $3)",
                    event.agency_id(), event.event_id(), DayOf(event));
    return absl::OkStatus();
  }

  // A consumer reading this same log and recording each event in `applied`.
  std::unique_ptr<EventConsumer> Consumer(std::function<absl::Status(const Event&)> check = {}) {
    return std::make_unique<EventConsumer>(
        *database_, ConsumerOptions{.source = "self", .page_size = 2},
        [this](int64_t after, int size) { return log_->Read(after, size, {}); },
        [check](pqxx::work& tx, const Event& event) -> absl::Status {
          if (check) {
            if (absl::Status s = check(event); !s.ok()) return s;
          }
          return Record(tx, event);
        });
  }

  int Applied() { return db_->AdminQuery("SELECT count(*) FROM consent.applied")[0][0].as<int>(); }

  // A batch handler that records each run's days in `runs`, checks that the transaction is
  // scoped to the run's agency, and applies the run's events one by one with `apply`.
  static EventBatchHandler RecordingRuns(std::vector<std::vector<int>>& runs, EventHandler apply) {
    return [&runs, apply](pqxx::work& tx, const std::vector<const Event*>& events) {
      std::vector<int> days;
      for (const Event* e : events) {
        days.push_back(DayOf(*e));
        EXPECT_EQ(tx.exec1("SELECT current_setting('app.agency_id')")[0].as<std::string>(),
                  e->agency_id());
      }
      runs.push_back(days);
      for (const Event* e : events) {
        if (absl::Status st = apply(tx, *e); !st.ok()) return st;
      }
      return absl::OkStatus();
    };
  }

  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<Database> database_;
  std::unique_ptr<EventLog> log_;
};

TEST_F(EventLogTest, EventsCommitWithTheChangeAndReadInOrder) {
  ASSERT_TRUE(Append("agency-a", 1).ok());
  ASSERT_TRUE(Append("agency-b", 2).ok());
  // A change that rolls back takes its event with it.
  absl::Status rolled_back = database_->TransactForAgency("agency-a", [](pqxx::work& tx) {
    AppendEvent(tx, "agency-a", "x", Payload(9)).IgnoreError();
    return absl::AbortedError("the change failed");
  });
  ASSERT_FALSE(rolled_back.ok());
  ASSERT_TRUE(Append("agency-a", 3).ok());

  EventPage page = ReadAll();
  EXPECT_EQ(Days(page), (std::vector<int>{1, 2, 3}));
  ASSERT_EQ(page.events.size(), 3u);
  EXPECT_EQ(page.events[0].position(), 1);
  EXPECT_EQ(page.events[2].position(), 3);
  EXPECT_EQ(page.head_position, 3);
  EXPECT_EQ(page.events[1].agency_id(), "agency-b");
  EXPECT_EQ(page.events[0].aggregate_id(), "aggregate-1");
  EXPECT_EQ(page.events[0].type(), "peerpath.common.v1.Date");
  EXPECT_FALSE(page.events[0].event_id().empty());
  EXPECT_GT(page.events[0].occurred_at().seconds(), 0);
  EXPECT_EQ(Days(ReadAll(2)), (std::vector<int>{3}));
  // Filter by type.
  auto none = log_->Read(0, 10, {"peerpath.checkin.v1.CheckInRecordedEvent"});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->events.empty());
}

TEST_F(EventLogTest, AnAgencyScopedTransactionSeesNoEventsAndCannotRewriteThem) {
  ASSERT_TRUE(Append("agency-a", 1).ok());
  ReadAll();
  auto visible = database_->TransactForAgency("agency-b", [](pqxx::work& tx) {
    return absl::StatusOr<int>(tx.exec1("SELECT count(*) FROM outbox")[0].as<int>());
  });
  ASSERT_TRUE(visible.ok());
  EXPECT_EQ(*visible, 0);
  for (const char* sql : {"UPDATE outbox SET aggregate_id = 'forged'", "DELETE FROM outbox"}) {
    absl::Status changed = database_->TransactForAgency("agency-a", [&](pqxx::work& tx) {
      tx.exec0(sql);
      return absl::OkStatus();
    });
    EXPECT_FALSE(changed.ok()) << sql;
  }
  EXPECT_EQ(Days(ReadAll()), (std::vector<int>{1}));
}

TEST_F(EventLogTest, LateCommitIsNeverSkipped) {
  // Writer A inserts first (the lower id) but commits last.
  std::promise<void> a_inserted, a_release;
  std::thread writer_a([&] {
    absl::Status status = database_->TransactForAgency("agency-a", [&](pqxx::work& tx) {
      absl::Status s = AppendEvent(tx, "agency-a", "slow", Payload(1));
      a_inserted.set_value();
      a_release.get_future().wait();
      return s;
    });
    EXPECT_TRUE(status.ok()) << status;
  });
  a_inserted.get_future().wait();
  ASSERT_TRUE(Append("agency-a", 2).ok());  // Writer B commits first.

  auto consumer = Consumer();
  auto first = consumer->PollOnce();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, 1);  // Only B is visible.
  EXPECT_EQ(consumer->Position().value_or(-1), 1);

  a_release.set_value();
  writer_a.join();
  auto second = consumer->PollOnce();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, 1);  // A arrives after B, at a higher position: not skipped.
  EXPECT_EQ(Applied(), 2);
  EventPage page = ReadAll();
  EXPECT_EQ(Days(page), (std::vector<int>{2, 1}));
}

TEST_F(EventLogTest, ConsumerAppliesEachEventOnceAndResumesAfterRestart) {
  for (int day = 1; day <= 5; ++day)
    ASSERT_TRUE(Append(day % 2 ? "agency-a" : "agency-b", day).ok());
  {
    auto consumer = Consumer();
    EXPECT_EQ(consumer->PollOnce().value_or(-1), 2);  // Page size 2.
  }
  // A new consumer (a restart) resumes after position 2.
  auto consumer = Consumer();
  EXPECT_EQ(consumer->Position().value_or(-1), 2);
  EXPECT_EQ(consumer->PollOnce().value_or(-1), 2);
  EXPECT_EQ(consumer->PollOnce().value_or(-1), 1);
  EXPECT_EQ(consumer->PollOnce().value_or(-1), 0);
  EXPECT_EQ(Applied(), 5);

  // after_commit runs once per page that applied something, when its effects are visible.
  std::vector<int> seen_after_commit;
  auto observed = std::make_unique<EventConsumer>(
      *database_,
      ConsumerOptions{.source = "observed",
                      .page_size = 3,
                      .after_commit = [&] { seen_after_commit.push_back(Applied()); }},
      [this](int64_t after, int size) { return log_->Read(after, size, {}); },
      [](pqxx::work& tx, const Event& event) -> absl::Status {
        tx.exec_params0("INSERT INTO applied (agency_id, event_id, day) VALUES ($1, $2, -1)",
                        event.agency_id(), event.event_id() + "-observed");
        return absl::OkStatus();
      });
  EXPECT_EQ(observed->PollOnce().value_or(-1), 3);
  EXPECT_EQ(observed->PollOnce().value_or(-1), 2);
  EXPECT_EQ(observed->PollOnce().value_or(-1), 0);
  EXPECT_EQ(seen_after_commit, (std::vector<int>{8, 10}));
  db_->AdminQuery("DELETE FROM consent.applied WHERE day = -1");

  // A page delivered again (a retry, another replica) changes nothing.
  auto replay = std::make_unique<EventConsumer>(
      *database_, ConsumerOptions{.source = "self"},
      [this](int64_t, int size) { return log_->Read(0, size, {}); },
      [](pqxx::work& tx, const Event& event) -> absl::Status {
        tx.exec_params0("INSERT INTO applied (agency_id, event_id, day) VALUES ($1, $2, 0)",
                        event.agency_id(), event.event_id());
        return absl::OkStatus();
      });
  EXPECT_EQ(replay->PollOnce().value_or(-1), 0);
  EXPECT_EQ(Applied(), 5);
  // Each effect was written under its event's agency (row-level security would refuse others).
  EXPECT_EQ(
      db_->AdminQuery("SELECT count(*) FROM consent.applied WHERE agency_id = 'agency-b'")[0][0]
          .as<int>(),
      2);
}

TEST_F(EventLogTest, EffectsForAnotherAgencyAreRefusedByTheDatabase) {
  ASSERT_TRUE(Append("agency-a", 1).ok());
  EventConsumer consumer(
      *database_, ConsumerOptions{.source = "self"},
      [this](int64_t after, int size) { return log_->Read(after, size, {}); },
      [](pqxx::work& tx, const Event& event) -> absl::Status {
        tx.exec_params0("INSERT INTO applied (agency_id, event_id, day) VALUES ('agency-z', $1, 0)",
                        event.event_id());
        return absl::OkStatus();
      });
  EXPECT_FALSE(consumer.PollOnce().ok());
  EXPECT_EQ(Applied(), 0);
  EXPECT_EQ(consumer.Position().value_or(-1), 0);  // Not acknowledged: retried later.
}

TEST_F(EventLogTest, AnEventThatCanNeverApplyIsSetAsideNotBlocking) {
  for (int day = 1; day <= 3; ++day) ASSERT_TRUE(Append("agency-a", day).ok());
  auto consumer = Consumer([](const Event& event) {
    return DayOf(event) == 2 ? absl::InvalidArgumentError("unreadable") : absl::OkStatus();
  });
  EXPECT_EQ(consumer->PollOnce().value_or(-1), 1);  // Page 1-2: 2 is set aside.
  EXPECT_EQ(consumer->PollOnce().value_or(-1), 1);
  EXPECT_EQ(Applied(), 2);
  EXPECT_EQ(db_->AdminQuery("SELECT position FROM consent.consumer_failures")[0][0].as<int>(), 2);
}

TEST_F(EventLogTest, BatchHandlerTakesRunsOfOneAgencyAndFallsBackPerEventOnAPermanentError) {
  // a a b b a (days 1-5), day 4 can never apply.
  const char* agencies[] = {"agency-a", "agency-a", "agency-b", "agency-b", "agency-a"};
  for (int day = 1; day <= 5; ++day) ASSERT_TRUE(Append(agencies[day - 1], day).ok());
  std::vector<std::vector<int>> runs;
  auto insert = [](pqxx::work& tx, const Event& event) -> absl::Status {
    if (DayOf(event) == 4) return absl::InvalidArgumentError("unreadable");
    return Record(tx, event);
  };
  EventConsumer consumer(
      *database_, ConsumerOptions{.source = "self", .apply_batch = RecordingRuns(runs, insert)},
      [this](int64_t after, int size) { return log_->Read(after, size, {}); }, insert);
  // The whole page fails in the batch (day 4), is rolled back and redone one event at a time:
  // four apply, day 4 is set aside.
  EXPECT_EQ(consumer.PollOnce().value_or(-1), 4);
  EXPECT_EQ(runs, (std::vector<std::vector<int>>{{1, 2}, {3, 4}}));
  EXPECT_EQ(Applied(), 4);
  EXPECT_EQ(db_->AdminQuery("SELECT position FROM consent.consumer_failures")[0][0].as<int>(), 4);
  EXPECT_EQ(consumer.Position().value_or(-1), 5);

  // A clean page goes through the batch handler only, in runs split where the agency changes.
  runs.clear();
  ASSERT_TRUE(Append("agency-b", 6).ok());
  ASSERT_TRUE(Append("agency-b", 7).ok());
  ASSERT_TRUE(Append("agency-a", 8).ok());
  EXPECT_EQ(consumer.PollOnce().value_or(-1), 3);
  EXPECT_EQ(runs, (std::vector<std::vector<int>>{{6, 7}, {8}}));
  EXPECT_EQ(Applied(), 7);
  // Delivered again: at or below the stored position, nothing reaches the handler.
  runs.clear();
  EventConsumer again(
      *database_,
      ConsumerOptions{.source = "self",
                      .apply_batch =
                          [&](pqxx::work&, const std::vector<const Event*>& events) {
                            runs.push_back({static_cast<int>(events.size())});
                            return absl::OkStatus();
                          }},
      [this](int64_t, int size) { return log_->Read(0, size, {}); }, insert);
  EXPECT_EQ(again.PollOnce().value_or(-1), 0);
  EXPECT_TRUE(runs.empty());
  EXPECT_EQ(Applied(), 7);
}

// With runs_by_agency, a page's events of one agency are one run, in log order, wherever the
// other agencies' events fall between them; the stored position is the page's last event.
TEST_F(EventLogTest, RunsByAgencyTakeEveryEventOfAnAgencyInThePageTogether) {
  // a b a b a (days 1-5).
  for (int day = 1; day <= 5; ++day) {
    ASSERT_TRUE(Append(day % 2 == 1 ? "agency-a" : "agency-b", day).ok());
  }
  std::vector<std::vector<int>> runs;
  EventConsumer consumer(
      *database_,
      ConsumerOptions{
          .source = "self", .apply_batch = RecordingRuns(runs, Record), .runs_by_agency = true},
      [this](int64_t after, int size) { return log_->Read(after, size, {}); }, Record);
  EXPECT_EQ(consumer.PollOnce().value_or(-1), 5);
  EXPECT_EQ(runs, (std::vector<std::vector<int>>{{1, 3, 5}, {2, 4}}));
  EXPECT_EQ(Applied(), 5);
  EXPECT_EQ(consumer.Position().value_or(-1), 5);
  // Nothing after it: nothing applied again.
  runs.clear();
  EXPECT_EQ(consumer.PollOnce().value_or(-1), 0);
  EXPECT_TRUE(runs.empty());
  EXPECT_EQ(Applied(), 5);
}

TEST_F(EventLogTest, BackgroundConsumerCatchesUpAndStops) {
  for (int day = 1; day <= 7; ++day) ASSERT_TRUE(Append("agency-a", day).ok());
  auto consumer = Consumer();
  consumer->Start();
  for (int i = 0; i < 100 && Applied() < 7; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(Applied(), 7);
  consumer->Stop();
}

// While a page applies, the background consumer fetches the next one. A page fetched ahead of a
// failed round is dropped, and each retry fetches only its own page again: every event applies
// once, in log order.
TEST_F(EventLogTest, TheNextPageIsFetchedWhileAPageAppliesAndDroppedAfterAFailure) {
  for (int day = 1; day <= 8; ++day) ASSERT_TRUE(Append("agency-a", day).ok());
  std::mutex mu;
  std::condition_variable fetched;
  std::vector<int64_t> afters;  // Where each fetch started.
  std::vector<int> order;       // Days applied, in order.
  bool overlapped = false;
  int failures = 0;
  auto consumer = std::make_unique<EventConsumer>(
      *database_,
      ConsumerOptions{.source = "ahead",
                      .page_size = 2,
                      .idle_poll = absl::Milliseconds(20),
                      .min_backoff = absl::Milliseconds(10)},
      [&](int64_t after, int size) {
        {
          std::lock_guard<std::mutex> lock(mu);
          afters.push_back(after);
        }
        fetched.notify_all();
        return log_->Read(after, size, {});
      },
      [&](pqxx::work& tx, const Event& event) -> absl::Status {
        const int day = DayOf(event);
        {
          std::unique_lock<std::mutex> lock(mu);
          if (day == 1) {
            // The first page stays open until the second page has been asked for.
            overlapped = fetched.wait_for(lock, std::chrono::seconds(5), [&] {
              return std::find(afters.begin(), afters.end(), 2) != afters.end();
            });
          }
          if (day == 3 && failures < 2) {
            ++failures;
            return absl::UnavailableError("database busy");  // The second page's first two tries.
          }
          order.push_back(day);
        }
        return Record(tx, event);
      });
  consumer->Start();
  // Until every event applied and the consumer has asked after the last one (its first idle
  // poll), which may come just after the last page's commit.
  const auto fetches = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return afters.size();
  };
  for (int i = 0; i < 200 && (Applied() < 8 || fetches() < 8); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  consumer->Stop();
  EXPECT_TRUE(overlapped);
  EXPECT_EQ(Applied(), 8);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}));
  // Page 1 with page 2 ahead; page 2 (fails) with page 3 ahead, which is dropped; page 2 alone,
  // twice (fails, then applies); page 3 with page 4 ahead; page 4 is the last, so nothing ahead;
  // then the idle polls.
  ASSERT_GE(afters.size(), 8u);
  EXPECT_EQ(std::vector<int64_t>(afters.begin(), afters.begin() + 8),
            (std::vector<int64_t>{0, 2, 4, 2, 2, 4, 6, 8}));
}

TEST_F(EventLogTest, SubscribersBeyondTheCapAreTurnedAway) {
  EventLog capped(*database_, EventLogLimits{.max_subscribers = 2});
  EXPECT_TRUE(capped.TryAddSubscriber());
  EXPECT_TRUE(capped.TryAddSubscriber());
  EXPECT_FALSE(capped.TryAddSubscriber());
  capped.RemoveSubscriber();
  EXPECT_TRUE(capped.TryAddSubscriber());
}

TEST_F(EventLogTest, RequestValidationNamesEachBadField) {
  absl::Status status = ValidateEventLogRequest(-1, -5, {"ok.Type", "bad type!"});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  std::vector<std::string> fields;
  for (const auto& v : FieldViolations(status)) fields.push_back(v.field);
  EXPECT_EQ(fields, (std::vector<std::string>{"after_position", "page_size", "event_types[1]"}));
}

}  // namespace
}  // namespace peerpath::testing
