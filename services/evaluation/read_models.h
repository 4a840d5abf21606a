#pragma once

// Applying the producers' events to the evaluation read models (migrations/0002), inside the
// consumer's transaction (scoped to the event's agency). Each function first records the event
// id in applied_events: a second delivery of the same event changes nothing. Every change is an
// upsert keyed by the producer's ids whose result does not depend on the order in which one
// object's events arrive (first times keep the earliest, flags only turn on, counters count
// distinct events), so a replay from position 0 rebuilds the same rows.
//
// Local days and months (contact_days, supporter_contacts_month, wellbeing_month) are taken in
// the agency's time zone as stored when the contact is applied (agency_time_zones, migrations/
// 0005, set by ProgramPolicyChangedEvent and EnrollmentStartedEvent): the consumer applies the
// check-in log in order, so a replay dates every contact as the live run did.
//
// Events of types the measures do not use are recorded as applied and otherwise ignored. A
// payload that cannot be read or carries a malformed id is INVALID_ARGUMENT (the consumer sets
// it aside rather than blocking the log).

#include <pqxx/pqxx>
#include <vector>

#include "absl/status/status.h"
#include "common/event_consumer.h"
#include "peerpath/common/v1/common.pb.h"

namespace peerpath::evaluation {

absl::Status ApplyCheckInEvent(pqxx::work& tx, const common::v1::Event& event);
absl::Status ApplyMatchingEvent(pqxx::work& tx, const common::v1::Event& event);
absl::Status ApplyEscalationEvent(pqxx::work& tx, const common::v1::Event& event);
absl::Status ApplyConsentEvent(pqxx::work& tx, const common::v1::Event& event);

// Applies a run of check-in events of one agency (the transaction's) at once: check-ins and
// contact attempts in one statement over arrays, the other types one by one as above (the
// contacts gathered so far are written before an event that may name the time zone). The result
// is the same as applying them one by one in the same order; what it saves is a database round trip
// per event (about 0.1 ms here), which would cap a per-event consumer below 10,000 events/s. The
// check-in consumer's batch handler.
absl::Status ApplyCheckInBatch(pqxx::work& tx, const std::vector<const common::v1::Event*>& events);

// How the service consumes the check-in log: with ApplyCheckInBatch, in one run per agency of
// each page (runs_by_agency). Every read model row is one agency's and every handler reads only
// its own agency's rows (the time zone included), so an agency's result does not depend on the
// others' events between its own. A county's log alternates agencies: in runs of consecutive
// events the batch held one event, and 16 agencies in turn applied 3.7k events/s instead of 44k.
ConsumerOptions CheckInConsumerOptions();

// Empties every read model of every agency (not service_outcomes) and the stored positions of
// the four sources, so the consumers re-read the logs from position 0.
absl::Status ResetReadModels(pqxx::work& tx);

}  // namespace peerpath::evaluation
