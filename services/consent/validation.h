#pragma once

// Request validation of the consent service: plain functions that return every problem, each
// naming its field, never only the first. Time is passed in.

#include <google/protobuf/repeated_field.h>

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/identifiers.h"
#include "common/status.h"
#include "peerpath/consent/v1/consent.pb.h"

namespace peerpath::consent {

using Violations = std::vector<FieldViolation>;

// Role names a consent can name as a ROLE recipient.
bool IsConsentRole(absl::string_view role);

// An id field: required, 1 to 128 characters.
void CheckId(absl::string_view value, const std::string& field, Violations& out);
// A UUID field: required and a UUID.
void CheckUuid(absl::string_view value, const std::string& field, Violations& out);
void CheckRecipient(const v1::Recipient& recipient, const std::string& field, Violations& out);
void CheckActor(const v1::Actor& actor, const std::string& field, Violations& out);
void CheckPurpose(int purpose, const std::string& field, Violations& out);
// A time the database can store: years 0001 to 9999, nanos 0 to 999,999,999 (false and a
// violation otherwise).
bool CheckTimestamp(const google::protobuf::Timestamp& t, const std::string& field,
                    Violations& out);
// CheckTimestamp of a range's times that are set, named `<field>.start_time` / `.end_time`, and
// its end after its start when both are set and valid.
void CheckTimeRange(const common::v1::TimeRange& range, const std::string& field, Violations& out);
void CheckCategory(int category, const std::string& field, Violations& out);
// 1 to `max` distinct, known, specified categories.
void CheckCategories(const google::protobuf::RepeatedField<int>& categories,
                     const std::string& field, int max, Violations& out);

// Every problem of the consent of a RecordConsent request (fields prefixed "consent.").
// `caller_subject` is the default for obtained_by.
Violations ValidateNewConsent(const v1::Consent& consent, absl::string_view caller_subject,
                              absl::Time now);

// Empty when `consent` is an agreement to peer involvement a peer supporter (`subject`) may
// record; otherwise why not.
std::string PeerAgreementProblem(const v1::Consent& consent, absl::string_view subject);

}  // namespace peerpath::consent
