#include "services/escalation/opening_writes.h"

#include "services/escalation/notification_outbox.h"
#include "services/escalation/watch_feed.h"

namespace peerpath::escalation {

void OpeningWrites::WriteTo(DeferredWrites& writes) const {
  Store::InsertConcerns(writes, concerns);
  AppendEvents(writes, agency_id, events);
  AppendAudits(writes, agency_id, audits);
  NotificationOutbox::Enqueue(writes, notifications);
  WatchFeed::Record(writes, feed);
}

}  // namespace peerpath::escalation
