#include "services/escalation/notifier.h"

#include "common/log.h"
#include "services/escalation/store.h"

namespace peerpath::escalation {

void LogNotifier::Notify(const Notification& n) {
  log::Info("concern notification", {{"agency_id", n.agency_id},
                                     {"concern_id", n.concern_id},
                                     {"reason", n.reason},
                                     {"severity", SeverityCode(n.severity)},
                                     {"level", n.level},
                                     {"target_kind", TargetKindCode(n.target.kind)},
                                     {"target_id", n.target.id}});
}

}  // namespace peerpath::escalation
