#include "services/checkin/checkin_service.h"

namespace peerpath::checkin {

const RoleRules& CheckInService::Rules() {
  using enum Role;
  static const auto* const rules = new RoleRules{
      {"PublishPathwayVersion", {kProgramAdmin}},
      // A pathway definition holds no personal data.
      {"GetPathwayVersion",
       {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kProgramAdmin, kIntegration}},
      {"ListPathwayVersions",
       {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kProgramAdmin, kIntegration}},
      {"CreateEnrollment", {kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"GetEnrollment",
       {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration, kService}},
      {"ListEnrollments", {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"EndEnrollment", {kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"ResumeRoutineEngagement", {kClinician}},
      {"RecordCheckIn", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"GetCheckIn", {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"ListCheckIns", {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"ListDueCheckIns", {kPeerSupporter, kSupervisor}},
      {"RecordContactAttempt", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"ScheduleAppointment", {kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"RecordAppointmentOutcome", {kSupervisor, kClinician, kCaseManager, kIntegration}},
      {"ListAppointments", {kPeerSupporter, kSupervisor, kClinician, kCaseManager, kIntegration}},
      // Program settings, not personal data: operations may read them.
      {"GetProgramPolicy",
       {kProgramAdmin, kSupervisor, kClinician, kCaseManager, kPeerSupporter, kOperations}},
      {"UpdateProgramPolicy", {kProgramAdmin}},
      {"GetWellbeingTrend", {kPeerSupporter, kSupervisor, kClinician, kCaseManager}},
      {"ListEvents", {kService}},
      {"Subscribe", {kService}},
  };
  return *rules;
}

CheckInService::CheckInService(ServiceContext& context)
    : CheckInServiceBase(authorizer_, events_, context.stopping),
      authorizer_(context.verifier, "peerpath.checkin.v1.CheckInService", Rules(), &context.db),
      events_(context.db) {}

}  // namespace peerpath::checkin
