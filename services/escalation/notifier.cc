#include "services/escalation/notifier.h"

#include "common/log.h"
#include "services/escalation/store.h"

namespace peerpath::escalation {

bool LogNotifier::Deliver(const Notification& n) {
  log::Info("concern notification", {{"agency_id", n.agency_id},
                                     {"concern_id", n.concern_id},
                                     {"reason", n.reason},
                                     {"severity", SeverityCode(n.severity)},
                                     {"level", n.level},
                                     {"target_kind", TargetKindCode(n.target.kind)},
                                     {"target_id", n.target.id}});
  return true;
}

}  // namespace peerpath::escalation
