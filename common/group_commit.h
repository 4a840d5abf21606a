#pragma once

// Group commit: concurrent callers' writes run together, one batch per database round trip and
// commit, each caller answered only after the batch that holds its write has run.
//
// The scheme is the leader/follower queue of PostgreSQL's own group commit and LevelDB's writer
// queue. Submit queues the caller's item and waits. When fewer than `max_concurrent` batches are
// running, the first queued caller whose group has fewer than `max_concurrent_per_group` running
// becomes a leader: it takes the items of its group queued behind it (up to `max_batch`, no
// shared conflict key), runs them as one batch on its own thread, hands every item its result
// and wakes the next leader. No timer: a lone caller runs at once, and under load a batch holds
// whatever queued while the previous one ran, so the batch size follows the load. With one group
// (or the per-group limit equal to the total) the leader is always the head of the queue; with
// many, a group whose batches fill its share never holds back the others.
//
// `group_of`: items of different groups never share a batch (e.g. the agency a statement scopes
// itself to). `conflict_keys`: items sharing a key never share a batch (e.g. two writes of one
// row); the later one keeps its place in the queue and goes in a following batch.
//
// `run_batch` returns exactly one result per item, in the items' order. If it throws, every item
// of the batch gets the exception, rethrown by its Submit.
//
// Announcements (as PostgreSQL's commit_delay, but waiting for known arrivals rather than for
// time): a caller that will submit soon (e.g. one of several whose reads just returned together)
// may say so first. A leader waits, up to `gather`, while items of its group are announced and
// not yet queued, so that items arriving microseconds apart share its batch instead of the first
// going alone.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace peerpath {

struct GroupCommitOptions {
  int max_batch = 64;
  int max_concurrent = 1;  // Batches running at once.
  // Batches of one group running at once; 0: max_concurrent.
  int max_concurrent_per_group = 0;
  // Longest a leader waits for announced items of its group; zero: never waits.
  std::chrono::microseconds gather{0};
};

template <typename Item, typename Result>
class GroupCommitter {
 public:
  using RunBatch = std::function<std::vector<Result>(const std::vector<const Item*>& items)>;
  using GroupOf = std::function<std::string(const Item&)>;
  using ConflictKeys = std::function<std::vector<std::string>(const Item&)>;

  GroupCommitter(GroupCommitOptions options, RunBatch run_batch, GroupOf group_of,
                 ConflictKeys conflict_keys)
      : options_(options),
        run_batch_(std::move(run_batch)),
        group_of_(std::move(group_of)),
        conflict_keys_(std::move(conflict_keys)) {
    if (options_.max_batch < 1 || options_.max_concurrent < 1 ||
        options_.max_concurrent_per_group < 0) {
      throw std::invalid_argument(
          "GroupCommitter: max_batch and max_concurrent must be >= 1, "
          "max_concurrent_per_group >= 0");
    }
    if (options_.max_concurrent_per_group == 0 ||
        options_.max_concurrent_per_group > options_.max_concurrent) {
      options_.max_concurrent_per_group = options_.max_concurrent;
    }
  }
  GroupCommitter(const GroupCommitter&) = delete;
  GroupCommitter& operator=(const GroupCommitter&) = delete;

  // Says that `n` items of `group` will be submitted soon. Each announcement ends with a
  // Submit(item, /*announced=*/true) of that group or a Withdraw(group).
  void Announce(const std::string& group, int n = 1) {
    if (n <= 0) return;
    std::lock_guard lock(mu_);
    announced_[group] += n;
  }
  // Ends an announcement of `group` whose item will not be submitted.
  void Withdraw(const std::string& group) {
    std::lock_guard lock(mu_);
    EndAnnouncement(group);
  }

  // Runs `item` in a batch and returns its result; `item` must outlive the call. `announced`:
  // this submission ends an announcement of the item's group.
  Result Submit(const Item& item, bool announced = false) {
    Waiter self(&item, group_of_(item), conflict_keys_(item));
    std::unique_lock lock(mu_);
    queue_.push_back(&self);
    if (announced) EndAnnouncement(self.group);
    for (bool woken = false;; woken = true) {
      if (self.done) return self.Take();
      if (MayLead(&self)) break;
      if (woken) ++idle_wakeups_;
      self.wake.wait(lock);
    }
    // Leading, and counted as running from now (its batch is being formed): another group's
    // first caller may lead meanwhile.
    self.leading = true;
    ++running_;
    ++running_in_[self.group];
    WakeNext();
    // First wait for the announced items of the group (each arrival or withdrawal wakes the
    // waiters), unless the batch is full already.
    if (options_.gather.count() > 0) {
      const auto deadline = std::chrono::steady_clock::now() + options_.gather;
      while (announced_.contains(self.group) && QueuedOf(self.group) < options_.max_batch &&
             self.wake.wait_until(lock, deadline) == std::cv_status::no_timeout) {
      }
    }
    std::vector<Waiter*> batch = TakeBatch(&self);
    // The next leader may form a batch of its own while this one runs.
    WakeNext();
    lock.unlock();

    std::vector<const Item*> items;
    items.reserve(batch.size());
    for (Waiter* w : batch) items.push_back(w->item);
    std::vector<Result> results;
    std::exception_ptr failure;
    try {
      results = run_batch_(items);
      if (results.size() != items.size()) {
        throw std::logic_error(
            "GroupCommitter: run_batch returned a result count unlike its items'");
      }
    } catch (...) {
      failure = std::current_exception();
    }

    lock.lock();
    --running_;
    if (auto it = running_in_.find(self.group); it != running_in_.end() && --it->second <= 0) {
      running_in_.erase(it);
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      Waiter* w = batch[i];
      if (failure) {
        w->failure = failure;
      } else {
        w->result.emplace(std::move(results[i]));
      }
      w->done = true;
      if (w != &self) w->wake.notify_one();
    }
    ++batches_;
    items_ += batch.size();
    WakeNext();
    return self.Take();
  }

  // Batches run and items they held, since construction: items / batches is the mean batch size.
  std::pair<long, long> Counts() const {
    std::lock_guard lock(mu_);
    return {batches_, items_};
  }

  // Wake-ups of queued callers that found neither their result nor their turn to lead: each
  // costs a context switch for nothing.
  long IdleWakeups() const {
    std::lock_guard lock(mu_);
    return idle_wakeups_;
  }

  // Items waiting for a batch to take them (not those in a running batch).
  int Queued() const {
    std::lock_guard lock(mu_);
    return static_cast<int>(queue_.size());
  }

 private:
  struct Waiter {
    Waiter(const Item* i, std::string g, std::vector<std::string> k)
        : item(i), group(std::move(g)), keys(std::move(k)) {}
    const Item* item;
    std::string group;
    std::vector<std::string> keys;
    std::condition_variable wake;
    bool leading = false;  // Forming its batch (still queued while it gathers).
    bool done = false;
    std::optional<Result> result;
    std::exception_ptr failure;

    Result Take() {
      if (failure) std::rethrow_exception(failure);
      return std::move(*result);
    }
  };

  void EndAnnouncement(const std::string& group) {
    auto it = announced_.find(group);
    if (it != announced_.end() && --it->second <= 0) announced_.erase(it);
    WakeNext();
  }

  // Wakes the queued callers whose wait may be over: the first that may lead now (MayLead admits
  // one at a time, and it wakes the next once it leads), and the leaders gathering their batch
  // (an announcement's end ends their wait). Not every queued caller: each one woken costs a
  // context switch, and all but one found nothing to do (39 idle wake-ups in twelve batches of
  // ABatchsEndWakesOnlyTheNextLeader; 13% of the escalation service's processor time per concern
  // when sixteen agencies' calls queue).
  void WakeNext() {
    bool next_woken = running_ >= options_.max_concurrent;
    for (Waiter* w : queue_) {
      if (w->leading) {
        w->wake.notify_one();
      } else if (!next_woken && HasRoom(w->group)) {
        w->wake.notify_one();
        next_woken = true;
      }
    }
  }

  bool HasRoom(const std::string& group) const {
    auto running = running_in_.find(group);
    return running == running_in_.end() || running->second < options_.max_concurrent_per_group;
  }

  // Whether `self` may lead now: a batch may start, and `self` is the first queued caller (not
  // already leading) whose group has room. Queue order is kept within a group and across groups
  // with room.
  bool MayLead(const Waiter* self) const {
    if (running_ >= options_.max_concurrent) return false;
    for (const Waiter* w : queue_) {
      if (!w->leading && HasRoom(w->group)) return w == self;
    }
    return false;
  }

  int QueuedOf(const std::string& group) const {
    return static_cast<int>(std::count_if(queue_.begin(), queue_.end(),
                                          [&](const Waiter* w) { return w->group == group; }));
  }

  // The leader and the items queued behind it that may join it (of its group, not leading a
  // batch of their own); removes them from the queue.
  std::vector<Waiter*> TakeBatch(Waiter* leader) {
    std::vector<Waiter*> batch{leader};
    std::vector<std::string> taken = leader->keys;
    const std::string& group = leader->group;
    auto shares_a_key = [&](const Waiter* w) {
      return std::any_of(w->keys.begin(), w->keys.end(), [&](const std::string& k) {
        return std::find(taken.begin(), taken.end(), k) != taken.end();
      });
    };
    std::deque<Waiter*> left;
    while (!queue_.empty()) {
      Waiter* w = queue_.front();
      queue_.pop_front();
      if (w == leader) continue;
      if (!w->leading && static_cast<int>(batch.size()) < options_.max_batch && w->group == group &&
          !shares_a_key(w)) {
        batch.push_back(w);
        taken.insert(taken.end(), w->keys.begin(), w->keys.end());
      } else {
        left.push_back(w);
      }
    }
    queue_ = std::move(left);
    return batch;
  }

  GroupCommitOptions options_;  // max_concurrent_per_group resolved (1..max_concurrent).
  const RunBatch run_batch_;
  const GroupOf group_of_;
  const ConflictKeys conflict_keys_;

  mutable std::mutex mu_;
  std::deque<Waiter*> queue_;
  std::map<std::string, int> announced_;   // Groups with announced items not yet submitted.
  int running_ = 0;                        // Batches running or being formed.
  std::map<std::string, int> running_in_;  // The same, per group (groups with any).
  long batches_ = 0;
  long items_ = 0;
  long idle_wakeups_ = 0;
};

}  // namespace peerpath
