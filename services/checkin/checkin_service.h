#pragma once

#include <prometheus/histogram.h>

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/authorization.h"
#include "common/event_consumer.h"
#include "common/event_log.h"
#include "common/group_commit.h"
#include "common/server.h"
#include "common/stop_signal.h"
#include "peerpath/checkin/v1/checkin.grpc.pb.h"
#include "services/checkin/consent_gates.h"
#include "services/checkin/store.h"

namespace peerpath::checkin {

using CheckInServiceBase =
    WithEventLogRpcs<v1::CheckInService::Service, v1::ListEventsRequest, v1::ListEventsResponse,
                     v1::SubscribeRequest, v1::SubscribeResponse>;

// Settings of this service beyond the common ones (flags in main.cc).
struct CheckInOptions {
  std::string consent_address;     // ConsentService (gates); empty: consent gates never hold.
  std::string matching_address;    // MatchingService event log (who is whose supporter).
  std::string escalation_address;  // EscalationService event log (routine engagement stops).
  std::string default_time_zone = "UTC";  // Program policy default for agencies without one.
  // How often missed windows and time without contact are swept; zero: never.
  absl::Duration sweep_interval = absl::Seconds(60);
  // Group commit: most check-ins of concurrent RecordCheckIn calls per write transaction; 1
  // writes each call alone.
  int max_write_batch = 64;
};

// peerpath.checkin.v1.CheckInService. Handlers authorize, validate, call the pathway and schedule
// rules and the store, and map the answer. RPCs not built yet answer UNIMPLEMENTED.
class CheckInService final : public CheckInServiceBase {
 public:
  CheckInService(ServiceContext& context, CheckInOptions options,
                 std::unique_ptr<ConsentGates> consent_gates);
  ~CheckInService() override;

  // Which roles may call each RPC (object-level rules come after, in the handlers).
  static const RoleRules& Rules();

  grpc::Status PublishPathwayVersion(grpc::ServerContext* context,
                                     const v1::PublishPathwayVersionRequest* request,
                                     v1::PublishPathwayVersionResponse* response) override;
  grpc::Status GetPathwayVersion(grpc::ServerContext* context,
                                 const v1::GetPathwayVersionRequest* request,
                                 v1::GetPathwayVersionResponse* response) override;
  grpc::Status ListPathwayVersions(grpc::ServerContext* context,
                                   const v1::ListPathwayVersionsRequest* request,
                                   v1::ListPathwayVersionsResponse* response) override;
  grpc::Status CreateEnrollment(grpc::ServerContext* context,
                                const v1::CreateEnrollmentRequest* request,
                                v1::CreateEnrollmentResponse* response) override;
  grpc::Status GetEnrollment(grpc::ServerContext* context, const v1::GetEnrollmentRequest* request,
                             v1::GetEnrollmentResponse* response) override;
  grpc::Status ListEnrollments(grpc::ServerContext* context,
                               const v1::ListEnrollmentsRequest* request,
                               v1::ListEnrollmentsResponse* response) override;
  grpc::Status EndEnrollment(grpc::ServerContext* context, const v1::EndEnrollmentRequest* request,
                             v1::EndEnrollmentResponse* response) override;
  grpc::Status ResumeRoutineEngagement(grpc::ServerContext* context,
                                       const v1::ResumeRoutineEngagementRequest* request,
                                       v1::ResumeRoutineEngagementResponse* response) override;
  grpc::Status RecordCheckIn(grpc::ServerContext* context, const v1::RecordCheckInRequest* request,
                             v1::RecordCheckInResponse* response) override;
  grpc::Status GetCheckIn(grpc::ServerContext* context, const v1::GetCheckInRequest* request,
                          v1::GetCheckInResponse* response) override;
  grpc::Status ListCheckIns(grpc::ServerContext* context, const v1::ListCheckInsRequest* request,
                            v1::ListCheckInsResponse* response) override;
  grpc::Status ListDueCheckIns(grpc::ServerContext* context,
                               const v1::ListDueCheckInsRequest* request,
                               v1::ListDueCheckInsResponse* response) override;
  grpc::Status RecordContactAttempt(grpc::ServerContext* context,
                                    const v1::RecordContactAttemptRequest* request,
                                    v1::RecordContactAttemptResponse* response) override;
  grpc::Status ScheduleAppointment(grpc::ServerContext* context,
                                   const v1::ScheduleAppointmentRequest* request,
                                   v1::ScheduleAppointmentResponse* response) override;
  grpc::Status RecordAppointmentOutcome(grpc::ServerContext* context,
                                        const v1::RecordAppointmentOutcomeRequest* request,
                                        v1::RecordAppointmentOutcomeResponse* response) override;
  grpc::Status UpdateProgramPolicy(grpc::ServerContext* context,
                                   const v1::UpdateProgramPolicyRequest* request,
                                   v1::UpdateProgramPolicyResponse* response) override;
  grpc::Status GetProgramPolicy(grpc::ServerContext* context,
                                const v1::GetProgramPolicyRequest* request,
                                v1::GetProgramPolicyResponse* response) override;
  grpc::Status ListAppointments(grpc::ServerContext* context,
                                const v1::ListAppointmentsRequest* request,
                                v1::ListAppointmentsResponse* response) override;
  grpc::Status GetWellbeingTrend(grpc::ServerContext* context,
                                 const v1::GetWellbeingTrendRequest* request,
                                 v1::GetWellbeingTrendResponse* response) override;
  grpc::Status RecordParticipantFeedback(grpc::ServerContext* context,
                                         const v1::RecordParticipantFeedbackRequest* request,
                                         v1::RecordParticipantFeedbackResponse* response) override;
  grpc::Status ListParticipantFeedback(grpc::ServerContext* context,
                                       const v1::ListParticipantFeedbackRequest* request,
                                       v1::ListParticipantFeedbackResponse* response) override;

 private:
  struct Call;
  absl::StatusOr<Call> Begin(grpc::ServerContext& context, const char* method);
  // Publishes the default pathways for the agency once per process (and on first use ever).
  void EnsureDefaults(pqxx::work& tx, const std::string& agency_id);
  // NOT_FOUND/PERMISSION_DENIED unless the caller may act for the participant.
  absl::Status RequireParticipantAccess(pqxx::work& tx, const Call& call,
                                        const std::string& participant_id);
  // The consent decision on check-in summaries of the participant for a staff caller outside the
  // peer relationship (PURPOSE_TREATMENT for a clinician, PURPOSE_CARE_COORDINATION otherwise).
  absl::StatusOr<AccessAnswer> CheckInSummariesAccess(const Call& call,
                                                      const std::string& participant_id);
  // Clears the answers of the check-ins whose participant's consent does not permit check-in
  // summaries to the caller (staff outside the peer relationship); UNAVAILABLE when the consent
  // service cannot be asked.
  absl::Status WithholdAnswersWithoutConsent(const Call& call, std::vector<v1::CheckIn*> check_ins);

  // A consent event of the participant's (granted, revoked, expired): the consent gates of their
  // active enrollments are asked again; `consent_gates_held` and the consent gate results are
  // updated, and EnrollmentConsentGatesChangedEvent written when `consent_gates_held` changes.
  absl::Status ApplyConsentEvent(pqxx::work& tx, const common::v1::Event& event);

  // One sweep of every agency: missed occurrences, then disengagement stages. Returns the number
  // of events written.
  absl::StatusOr<int> Sweep();
  absl::Status SweepAgency(pqxx::work& tx, const std::string& agency_id, int& events);

  absl::Status CreateEnrollmentImpl(const Call& call, const v1::CreateEnrollmentRequest& request,
                                    v1::CreateEnrollmentResponse& response);
  absl::Status RecordContactAttemptImpl(const Call& call,
                                        const v1::RecordContactAttemptRequest& request,
                                        v1::RecordContactAttemptResponse& response);
  absl::Status RecordCheckInImpl(const Call& call, const v1::RecordCheckInRequest& request,
                                 v1::RecordCheckInResponse& response);
  // Validates the check-in against what was read and fills `write` and `response` (no I/O but
  // the refusal audit).
  absl::Status DecideCheckIn(const Call& call, const v1::RecordCheckInRequest& request,
                             absl::Time occurred_at, const CheckInContext& read,
                             CheckInWrite& write, v1::RecordCheckInResponse& response);
  // Writes decided check-ins of one agency together (WriteCheckIns): one status per write, OK,
  // ABORTED (read again: the enrollment or occurrence changed) or ALREADY_EXISTS (the key was
  // claimed meanwhile). A batch that fails as a whole is written again one check-in at a time,
  // so that a bad one fails only its own call. A batch of one uses WriteCheckIn.
  std::vector<absl::Status> WriteCheckInBatch(const std::vector<const CheckInWrite*>& writes);
  // Reads what check-ins of one agency are decided on together (LoadCheckInContexts): one read
  // per query. A batch that fails as a whole is read again one check-in at a time, so that a bad
  // one fails only its own call. A batch of one uses LoadCheckInContext.
  std::vector<absl::StatusOr<CheckInRead>> ReadCheckInBatch(
      const std::vector<const CheckInContextQuery*>& queries);

  ServiceContext& context_;
  const CheckInOptions options_;
  Authorizer authorizer_;
  EventLog events_;
  std::unique_ptr<ConsentGates> consent_gates_;
  prometheus::Histogram* write_batch_sizes_ = nullptr;
  prometheus::Histogram* read_batch_sizes_ = nullptr;
  // Concurrent RecordCheckIn calls' writes, committed together.
  GroupCommitter<CheckInWrite, absl::Status> check_in_writes_;
  // Concurrent RecordCheckIn calls' reads, read together (nothing conflicts: no locks).
  GroupCommitter<CheckInContextQuery, absl::StatusOr<CheckInRead>> check_in_reads_;
  std::unique_ptr<EventConsumer> matching_consumer_;
  std::unique_ptr<EventConsumer> escalation_consumer_;
  std::unique_ptr<EventConsumer> consent_consumer_;
  StopSignal stop_sweeper_;
  std::thread sweeper_;
  std::mutex seeded_mu_;
  std::set<std::string> seeded_agencies_;
};

}  // namespace peerpath::checkin
