#pragma once

// The rows of concerns opened in one transaction (RaiseConcern's group commit, a check-in event's
// concern), gathered per table and written with one statement per table: PostgreSQL's cost per
// statement (executor start-up, the table's constraints compiled, after-trigger queues) was most
// of what a concern's six statements of its own cost.

#include <string>
#include <vector>

#include "common/audit.h"
#include "common/db.h"
#include "common/event_log.h"
#include "services/escalation/notifier.h"
#include "services/escalation/store.h"
#include "services/escalation/watch_hub.h"

namespace peerpath::escalation {

struct OpeningWrites {
  std::string agency_id;  // Every row's.
  std::vector<Store::NewConcern> concerns;
  EventBatch events;
  std::vector<Notification> notifications;
  std::vector<ConcernChangeNote> feed;
  std::vector<AuditEntry> audits;

  // Adds the statements to `writes`, concerns first (the rows that name them follow).
  void WriteTo(DeferredWrites& writes) const;
};

}  // namespace peerpath::escalation
