#include "services/consent/decision_cache.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <pqxx/pqxx>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "common/log.h"

namespace peerpath::consent {

namespace {

// The triggers of migration 0006 in the service's schema: until both exist a change may go
// unannounced, so the cache must not vouch.
bool TriggersInstalled(pqxx::connection& conn, const std::string& schema) {
  pqxx::nontransaction tx(conn);
  const pqxx::row row = tx.exec_params1(
      "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
      "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND t.tgname IN "
      "('consents_decision_inputs_changed', 'emergency_accesses_decision_inputs_changed')",
      schema);
  return row[0].as<int>() == 2;
}

// Calls one waiting call's continuation; one that throws must not keep the rest unanswered.
template <typename Call>
void Answer(Call& call, bool current) {
  try {
    call.done(current, std::move(call.found));
  } catch (const std::exception& e) {
    log::Error("consent decision cache: a waiting call failed", {{"error", e.what()}});
  }
}

}  // namespace

class DecisionCache::Receiver final : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection& conn, const std::string& channel, DecisionCache& cache)
      : pqxx::notification_receiver(conn, channel), cache_(cache) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override {
    cache_.Invalidate(payload);
  }

 private:
  DecisionCache& cache_;
};

DecisionCache::DecisionCache(DecisionCacheOptions options) : options_(std::move(options)) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (options_.listening != nullptr) options_.listening->Set(0);
  listener_ = std::thread([this] { Run(); });
}

DecisionCache::~DecisionCache() {
  stop_.Notify();
  Wake();
  if (listener_.joinable()) listener_.join();
  GoDeaf();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void DecisionCache::Wake() {
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t written = write(wake_fd_, &one, sizeof one);
}

void DecisionCache::AfterBarrier(std::function<void(bool current)> done) {
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (vouching_) {
      waiting_.push_back({[done = std::move(done)](bool current, Found) { done(current); }, {}});
      // Only the first call since the listener last took the queue needs to wake it.
      first = waiting_.size() == 1;
      if (!first) return;
    }
  }
  if (first) {
    Wake();
  } else {
    done(false);
  }
}

bool DecisionCache::AfterBarrierIfCached(const std::string& agency_id,
                                         const std::string& participant_id,
                                         const std::string& clinician_subject,
                                         FoundCallback& done) {
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!vouching_) return false;
    Found found = FindLocked(agency_id, participant_id, clinician_subject);
    if (found.inputs == nullptr) return false;
    waiting_.push_back({std::move(done), std::move(found)});
    first = waiting_.size() == 1;
  }
  if (first) Wake();
  return true;
}

std::shared_ptr<const store::DecisionInputs> DecisionCache::Find(
    const std::string& agency_id, const std::string& participant_id,
    const std::string& clinician_subject) const {
  std::lock_guard<std::mutex> lock(mu_);
  return FindLocked(agency_id, participant_id, clinician_subject).inputs;
}

DecisionCache::Found DecisionCache::FindLocked(const std::string& agency_id,
                                               const std::string& participant_id,
                                               const std::string& clinician_subject) const {
  Found found{nullptr, generation_.load()};
  auto it = participants_.find(participant_id);
  if (it == participants_.end()) return found;
  for (const Slot& slot : it->second) {
    if (slot.agency_id == agency_id && slot.clinician_subject == clinician_subject) {
      found.inputs = slot.inputs;
      break;
    }
  }
  return found;
}

uint64_t DecisionCache::Generation() const { return generation_.load(); }

void DecisionCache::Fill(uint64_t generation, const std::string& agency_id,
                         const std::string& participant_id, const std::string& clinician_subject,
                         store::DecisionInputs inputs) {
  auto shared = std::make_shared<const store::DecisionInputs>(std::move(inputs));
  std::lock_guard<std::mutex> lock(mu_);
  if (!vouching_ || generation != generation_) return;
  auto it = participants_.find(participant_id);
  if (it == participants_.end()) {
    if (options_.max_participants == 0) return;
    // The oldest participant still cached goes first (keys already invalidated are skipped).
    while (participants_.size() >= options_.max_participants && !fill_order_.empty()) {
      participants_.erase(fill_order_.front());
      fill_order_.pop_front();
    }
    it = participants_.emplace(participant_id, std::vector<Slot>{}).first;
    fill_order_.push_back(participant_id);
    if (fill_order_.size() > 2 * participants_.size() + 1024) CompactFillOrder();
  }
  std::vector<Slot>& slots = it->second;
  for (Slot& slot : slots) {
    if (slot.agency_id == agency_id && slot.clinician_subject == clinician_subject) {
      slot.inputs = std::move(shared);
      return;
    }
  }
  // A handful of (agency, clinician) pairs per participant; the oldest goes first.
  constexpr size_t kSlotsPerParticipant = 16;
  if (slots.size() >= kSlotsPerParticipant) slots.erase(slots.begin());
  slots.push_back({agency_id, clinician_subject, std::move(shared)});
}

void DecisionCache::CompactFillOrder() {
  // Each participant still cached once, at its latest fill; the dropped ones go.
  absl::flat_hash_set<std::string> seen;
  std::deque<std::string> kept;
  for (auto it = fill_order_.rbegin(); it != fill_order_.rend(); ++it) {
    if (participants_.contains(*it) && seen.insert(*it).second) kept.push_front(*it);
  }
  fill_order_ = std::move(kept);
}

void DecisionCache::Invalidate(const std::string& participant_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ++generation_;
  if (participant_id.empty()) {
    participants_.clear();  // A TRUNCATE.
    fill_order_.clear();
  } else {
    participants_.erase(participant_id);
  }
}

void DecisionCache::StartVouching() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
    participants_.clear();
    fill_order_.clear();
    vouching_ = true;
  }
  if (options_.listening != nullptr) options_.listening->Set(1);
}

void DecisionCache::GoDeaf() {
  std::vector<Waiting> refused = std::move(in_flight_);
  in_flight_.clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
    participants_.clear();
    fill_order_.clear();
    vouching_ = false;
    for (auto& done : waiting_) refused.push_back(std::move(done));
    waiting_.clear();
  }
  if (options_.listening != nullptr) options_.listening->Set(0);
  for (auto& done : refused) Answer(done, false);
}

void DecisionCache::Run() {
  const std::string& schema = options_.database.schema;
  DatabaseOptions listening = options_.database;
  listening.application_name += "-decision-cache";  // As pg_stat_activity shows it.
  while (!stop_.stopped()) {
    try {
      std::unique_ptr<pqxx::connection> conn = OpenConnection(listening);
      Receiver receiver(*conn, Channel(schema), *this);  // LISTEN, before anything is trusted.
      // libpqxx may reopen a lost connection by itself when a transaction starts; notifications
      // sent in between would be lost. A different backend means exactly that: start over.
      const int backend = conn->backendpid();
      auto same_session = [&] {
        if (conn->backendpid() != backend) {
          throw pqxx::broken_connection("the listening session was replaced");
        }
      };
      bool vouching = false;
      absl::Time next_trigger_check = absl::InfinitePast();
      while (!stop_.stopped()) {
        if (!vouching && absl::Now() >= next_trigger_check) {
          const bool installed = TriggersInstalled(*conn, schema);
          same_session();
          if (installed) {
            vouching = true;
            StartVouching();
          } else {
            next_trigger_check = absl::Now() + absl::Seconds(1);
          }
        }
        pollfd fds[2] = {{conn->sock(), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
        poll(fds, 2, vouching ? 1000 : 200);
        if ((fds[1].revents & POLLIN) != 0) {
          uint64_t count = 0;
          [[maybe_unused]] const ssize_t got = read(wake_fd_, &count, sizeof count);
        }
        conn->get_notifs();  // Throws when the connection is gone.
        {
          std::lock_guard<std::mutex> lock(mu_);
          in_flight_.swap(waiting_);
        }
        if (in_flight_.empty()) continue;
        if (options_.before_barrier) options_.before_barrier();
        {
          pqxx::nontransaction barrier(*conn);
          barrier.exec("SELECT 1");
        }
        same_session();
        conn->get_notifs();  // What the barrier brought, applied before anyone is answered.
        std::vector<Waiting> current = std::move(in_flight_);
        in_flight_.clear();
        for (auto& done : current) Answer(done, true);
      }
    } catch (const std::exception& e) {
      log::Warn("consent decision cache is not listening; access decisions read the database",
                {{"error", e.what()}});
    }
    GoDeaf();
    stop_.WaitFor(options_.reconnect_delay);
  }
}

}  // namespace peerpath::consent
