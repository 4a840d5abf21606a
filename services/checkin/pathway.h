#pragma once
// The pathway model (DESIGN.md 2.2) as plain functions over the pathway's data: which answers a
// check-in must carry, which routing rules they fire, which gates an enrollment must pass. No
// gRPC, no SQL: the messages below are the API's plain data types (peerpath.checkin.v1), used here
// only as values.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/status.h"
#include "peerpath/checkin/v1/checkin.pb.h"

namespace peerpath::checkin {

using Answers = google::protobuf::RepeatedPtrField<v1::Answer>;

// The four pathways every agency starts with (version 1, published by "system:default"), in
// this order: early_engagement, step_down, crisis_transition, structured_checkin. Their fields
// are exactly those named by the seeds (001 for the first three, 000 for the structured
// check-in).
const std::vector<v1::PathwayVersion>& DefaultPathways();

// Who publishes the defaults.
inline constexpr char kDefaultPublisher[] = "system:default";

// True for "a lower-case letter, then up to 62 lower-case letters, digits or underscores".
bool IsKey(absl::string_view key);

// One violation per bad or missing answer, in the order of the answers, then the required fields
// not answered in pathway order. Each violation's field is "answers.<field_key>" (or
// "answers[i].field_key" for an answer without a key).
std::vector<FieldViolation> ValidateAnswers(const v1::PathwayVersion& pathway,
                                            const Answers& answers);

// The routing rules whose conditions all hold for `answers`, in the pathway's rule order. Each
// rule appears at most once. Assumes the answers passed ValidateAnswers.
std::vector<const v1::RoutingRule*> FiringRules(const v1::PathwayVersion& pathway,
                                                const Answers& answers);

// The wellbeing score of a check-in: the answer to the pathway's wellbeing field, if any.
std::optional<int> WellbeingScore(const v1::PathwayVersion& pathway, const Answers& answers);

// True when the three latest scores (oldest first) fell by at least `drop_points`: the oldest
// minus the newest. Fewer than three scores never show a decline.
bool WellbeingDeclined(const std::vector<int>& latest_three_oldest_first, int drop_points);

// The gate's name as shown in errors and sent to the consent service: the consent gate name, or
// "appointment_owner", "escalation_route", "receiving_team_confirmed",
// "clinical_follow_up_owner" for owner gates.
std::string GateName(const v1::Gate& gate);

// Why an owner gate does not hold for `owners`, or nullopt when it holds. `is_peer_supporter`
// tells whether an owner id is known to be a peer supporter (such an owner never satisfies a
// gate: peer support is never the accountable owner).
std::optional<std::string> UnmetOwnerGate(
    v1::OwnerGate gate, const v1::EnrollmentOwners& owners,
    const std::function<bool(const std::string&)>& is_peer_supporter);

// Problems of an enrollment's dates and owners that do not depend on gates: `ends_on` or
// `review_on` present when the pathway requires one, dates in order, owners not too long.
std::vector<FieldViolation> ValidateEnrollmentShape(const v1::PathwayVersion& pathway,
                                                    const v1::CreateEnrollmentRequest& request);

}  // namespace peerpath::checkin

namespace peerpath::checkin {

// Every problem of a pathway version submitted for publishing, each naming its field as
// "pathway.<path>" (e.g. "pathway.fields[2].enum_field.options"): keys, field specs and bounds,
// gates, routing rules and their conditions, wellbeing and severity settings (see
// PublishPathwayVersion in checkin.proto).
std::vector<FieldViolation> ValidatePathwayDefinition(const v1::PathwayVersion& pathway);

}  // namespace peerpath::checkin
