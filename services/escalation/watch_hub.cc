#include "services/escalation/watch_hub.h"

#include "services/escalation/policy_codec.h"

namespace peerpath::escalation {

std::shared_ptr<WatchHub::Watcher> WatchHub::Add(const std::string& agency_id, const Target& target,
                                                 std::set<int> severities) {
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int>(watchers_.size()) >= max_watchers_) return nullptr;
  auto watcher = std::make_shared<Watcher>();
  watcher->agency_id = agency_id;
  watcher->target = target;
  watcher->severities = std::move(severities);
  watchers_.push_back(watcher);
  return watcher;
}

void WatchHub::Remove(const std::shared_ptr<Watcher>& watcher) {
  std::lock_guard<std::mutex> lock(mu_);
  watchers_.remove(watcher);
}

void WatchHub::Publish(const ConcernChangeNote& note) {
  const Target current = TargetFromProto(note.concern.current_target());
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& watcher : watchers_) {
    if (watcher->agency_id != note.concern.agency_id()) continue;
    if (!(watcher->target == current) && !(watcher->target == note.previous_target)) continue;
    if (!watcher->severities.empty() && !watcher->severities.contains(note.concern.severity())) {
      continue;
    }
    {
      std::lock_guard<std::mutex> queue_lock(watcher->mu);
      if (watcher->queue.size() >= buffer_) {
        watcher->fell_behind = true;
      } else {
        watcher->queue.push_back(note);
      }
    }
    watcher->wake.notify_one();
  }
}

bool InScope(const v1::Concern& concern, const Target& target) {
  return (concern.state() == v1::CONCERN_STATE_OPEN ||
          concern.state() == v1::CONCERN_STATE_ACKNOWLEDGED) &&
         TargetFromProto(concern.current_target()) == target;
}

}  // namespace peerpath::escalation
