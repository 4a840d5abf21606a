#!/usr/bin/python3
"""The PeerPath demo story, played end to end through gRPC against a running local stack
(tools/run-local --demo), in one agency ("demo") for one participant ("client-042"):

  0. every service is SERVING; earlier runs' state of the participant is wound down
  1. a program admin adds a peer supporter to the roster (matching)
  2. a supervisor opens a match request and accepts the top proposal, with its explanation
  3. a case manager's enrollment without consents is refused with the unmet gates (checkin)
  4. a clinician records the participant's consents; every consent gate holds (consent)
  5. the case manager enrolls the participant in early_engagement (checkin asks consent)
  6. the check-in service learns the peer supporter from matching's MatchStartedEvent
  7. the peer supporter records a check-in disclosing an immediate safety concern, and a retry
     with the same idempotency key returns the same check-in
  8. the escalation service opens the concern from check-in's event log; a clinician
     acknowledges and resolves it
  9. consent: an access check permits; after a revocation the same check denies

Each step prints one line (the match explanation adds one line per criterion); an unexpected
error prints its gRPC code and details and exits 1. Output names participants by id only.

Needs the generated Python stubs on PYTHONPATH (build/python); tokens are minted with
`peerpathctl token` and the development signing key (tools/run-local passes both).
"""

import argparse
import datetime
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pylib"))

import grpc  # noqa: E402
import peerpath_health  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from peerpath.checkin.v1 import checkin_pb2 as ci, checkin_pb2_grpc as ci_grpc  # noqa: E402
from peerpath.common.v1 import common_pb2 as common  # noqa: E402
from peerpath.consent.v1 import consent_pb2 as cs, consent_pb2_grpc as cs_grpc  # noqa: E402
from peerpath.escalation.v1 import escalation_pb2 as es, escalation_pb2_grpc as es_grpc  # noqa: E402
from peerpath.matching.v1 import matching_pb2 as mt, matching_pb2_grpc as mt_grpc  # noqa: E402
from peerpath.ops.v1 import operations_pb2, operations_pb2_grpc  # noqa: E402

AGENCY = "demo"
PARTICIPANT = "client-042"
PATHWAY = "early_engagement"
TIMEOUT = 10  # seconds, every call
WAIT = 30  # seconds, every poll

ADMIN = ("program_admin", "demo-admin")
SUPERVISOR = ("supervisor", "demo-supervisor")
CLINICIAN = ("clinician", "demo-clinician")
CASE_MANAGER = ("case_manager", "demo-case-manager")
OPERATOR = ("operations", "demo-operator")


class DemoFailure(Exception):
    """Something came back that the story does not expect."""


class Caller:
    """Mints and caches one development token per (role, subject)."""

    def __init__(self, peerpathctl, key):
        self.peerpathctl = peerpathctl
        self.key = key
        self.tokens = {}

    def metadata(self, who):
        if who not in self.tokens:
            role, sub = who
            out = subprocess.run(
                [self.peerpathctl, "token", f"--key={self.key}", f"--agency={AGENCY}",
                 f"--role={role}", f"--sub={sub}", "--ttl=1h"],
                check=True, capture_output=True, text=True)
            self.tokens[who] = out.stdout.strip()
        return (("authorization", "Bearer " + self.tokens[who]),)


def step(n, text):
    print(f"[{n}] {text}", flush=True)


def now_ts():
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def date(d):
    return common.Date(year=d.year, month=d.month, day=d.day)


def key(name):
    return f"demo-{name}-{uuid.uuid4()}"


def status_details(error):
    """The google.rpc.Status of a failed call, from the grpc-status-details-bin trailer."""
    for k, v in error.trailing_metadata() or ():
        if k == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(v)
            return status
    return None


def ename(enum, value):
    return enum.Name(value)


def poll(what, fn, timeout=WAIT, interval=0.25):
    """Calls fn until it returns something truthy; fn returns None to keep waiting."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoFailure(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def check_serving(args, call):
    states = []
    for name in ["matching", "checkin", "consent", "escalation", "evaluation"]:
        address = getattr(args, name)
        with grpc.insecure_channel(address) as channel:
            status = peerpath_health.check(channel)
            if status != peerpath_health.SERVING:
                raise DemoFailure(f"{name} at {address}: health status {status}, not SERVING")
            ops = operations_pb2_grpc.OperationsServiceStub(channel)
            migrations = ops.ListMigrations(operations_pb2.ListMigrationsRequest(),
                                            timeout=TIMEOUT, metadata=call.metadata(OPERATOR))
            latest = migrations.migrations[-1] if migrations.migrations else None
            states.append(f"{name} ({latest.version:04d})" if latest else f"{name} (no schema)")
    step(0, "serving: " + ", ".join(states))


def reset(matching, checkin, consent, call):
    """Winds down what earlier runs left for the participant, so that the story can be played
    again on the same database: active matches ended, requests in progress cancelled, active
    enrollments ended, active consents revoked."""
    counts = {"matches ended": 0, "requests cancelled": 0, "enrollments ended": 0,
              "consents revoked": 0}
    sup = call.metadata(SUPERVISOR)
    for m in matching.ListMatches(mt.ListMatchesRequest(
            participant_id=PARTICIPANT, statuses=[mt.MATCH_STATUS_ACTIVE], page_size=500),
            timeout=TIMEOUT, metadata=sup).matches:
        matching.EndMatch(mt.EndMatchRequest(match_id=m.match_id,
                                             reason=mt.MATCH_END_REASON_COMPLETED),
                          timeout=TIMEOUT, metadata=sup)
        counts["matches ended"] += 1
    for r in matching.ListMatchRequests(mt.ListMatchRequestsRequest(
            participant_id=PARTICIPANT,
            statuses=[mt.MATCH_REQUEST_STATUS_OPEN, mt.MATCH_REQUEST_STATUS_PROPOSED],
            page_size=500), timeout=TIMEOUT, metadata=sup).match_requests:
        matching.CancelMatchRequest(mt.CancelMatchRequestRequest(
            match_request_id=r.match_request_id, reason="demo reset"),
            timeout=TIMEOUT, metadata=sup)
        counts["requests cancelled"] += 1
    cm = call.metadata(CASE_MANAGER)
    for e in checkin.ListEnrollments(ci.ListEnrollmentsRequest(
            participant_id=PARTICIPANT, statuses=[ci.ENROLLMENT_STATUS_ACTIVE], page_size=500),
            timeout=TIMEOUT, metadata=cm).enrollments:
        checkin.EndEnrollment(ci.EndEnrollmentRequest(
            enrollment_id=e.enrollment_id, reason=ci.ENROLLMENT_END_REASON_OTHER),
            timeout=TIMEOUT, metadata=cm)
        counts["enrollments ended"] += 1
    cl = call.metadata(CLINICIAN)
    for c in consent.ListConsents(cs.ListConsentsRequest(
            participant_id=PARTICIPANT, statuses=[cs.CONSENT_STATUS_ACTIVE], page_size=500),
            timeout=TIMEOUT, metadata=cl).consents:
        consent.RevokeConsent(cs.RevokeConsentRequest(consent_id=c.consent_id,
                                                      reason="demo reset"),
                              timeout=TIMEOUT, metadata=cl)
        counts["consents revoked"] += 1
    step(0, f"reset {PARTICIPANT} from earlier runs: "
         + ", ".join(f"{v} {k}" for k, v in counts.items()))


def create_supporter(matching, call, run_id):
    today = datetime.date.today()
    supporter = mt.Supporter(
        subject=f"demo-peer-{run_id}",
        display_name=f"Demo Peer Supporter {run_id}",
        lived_experience_areas=["anxiety", "housing_instability"],
        languages=["en", "es"],
        gender="woman",
        age_band=mt.AGE_BAND_35_44,
        region="north",
        meeting_modes=[mt.MEETING_MODE_PHONE, mt.MEETING_MODE_VIDEO],
        availability=[mt.AvailabilityWindow(weekday=mt.WEEKDAY_TUESDAY, start_minute=9 * 60,
                                            end_minute=17 * 60),
                      mt.AvailabilityWindow(weekday=mt.WEEKDAY_THURSDAY, start_minute=9 * 60,
                                            end_minute=17 * 60)],
        capacity_units=10,
        training_status=mt.TRAINING_STATUS_CERTIFIED,
        training_expires_on=date(today + datetime.timedelta(days=365)),
        supervisor_subject=SUPERVISOR[1])
    s = matching.CreateSupporter(
        mt.CreateSupporterRequest(supporter=supporter, idempotency_key=key("supporter")),
        timeout=TIMEOUT, metadata=call.metadata(ADMIN)).supporter
    step(1, f"program admin added peer supporter {s.supporter_id} (subject {s.subject}, "
         f"{ename(mt.SupporterStatus, s.status)}, "
         f"{ename(mt.TrainingStatus, s.training_status)}, capacity {s.capacity_units} units)")
    return s


def match(matching, call, supporter):
    sup = call.metadata(SUPERVISOR)
    request = mt.MatchRequest(
        participant_id=PARTICIPANT,
        pathway_key=PATHWAY,
        urgency=mt.URGENCY_PRIORITY,
        hard_constraints=mt.HardConstraints(languages=["en"],
                                            meeting_modes=[mt.MEETING_MODE_PHONE]),
        preferences=mt.Preferences(
            lived_experience=mt.LivedExperiencePreference(areas=["anxiety"], weight=3),
            availability=mt.AvailabilityPreference(windows=[mt.AvailabilityWindow(
                weekday=mt.WEEKDAY_TUESDAY, start_minute=10 * 60, end_minute=12 * 60)]),
            region=mt.RegionPreference(region="north"),
            # The supporter the program admin just added is the preferred one: ranked first
            # when eligible (the service explains it as the continuity line).
            continuity=mt.ContinuityPreference(supporter_id=supporter.supporter_id)))
    mr = matching.CreateMatchRequest(
        mt.CreateMatchRequestRequest(match_request=request, idempotency_key=key("request")),
        timeout=TIMEOUT, metadata=sup).match_request
    proposed = matching.ProposeMatches(
        mt.ProposeMatchesRequest(match_request_id=mr.match_request_id, max_candidates=3,
                                 idempotency_key=key("propose")),
        timeout=TIMEOUT, metadata=sup)
    if not proposed.candidates:
        raise DemoFailure(f"no proposal for request {mr.match_request_id}: "
                          f"{proposed.no_candidate.text}")
    top = proposed.candidates[0].match
    accepted = matching.AcceptProposal(mt.AcceptProposalRequest(match_id=top.match_id),
                                       timeout=TIMEOUT, metadata=sup)
    m = accepted.match
    if m.status != mt.MATCH_STATUS_ACTIVE:
        raise DemoFailure(f"accepted match is {ename(mt.MatchStatus, m.status)}, not ACTIVE")
    if m.supporter_id != supporter.supporter_id:
        raise DemoFailure(f"top proposal is supporter {m.supporter_id}, not the new one")
    step(2, f"supervisor matched {PARTICIPANT} (request {mr.match_request_id}, "
         f"{proposed.eligible_count} eligible) with supporter {m.supporter_id}: match "
         f"{m.match_id} ACTIVE, score {m.score:.1f}, follow-up due "
         f"{accepted.follow_up.due_on.year:04d}-{accepted.follow_up.due_on.month:02d}-"
         f"{accepted.follow_up.due_on.day:02d}; why:")
    for line in m.explanation:
        print(f"      - {line.text}", flush=True)
    return m


def enrollment_request(idempotency_key):
    return ci.CreateEnrollmentRequest(
        participant_id=PARTICIPANT,
        pathway_key=PATHWAY,
        owners=ci.EnrollmentOwners(appointment_owner=CASE_MANAGER[1],
                                   receiving_clinician=CLINICIAN[1]),
        schedule=ci.CheckInSchedule(every_n_days=ci.EveryNDaysSchedule(interval_days=7),
                                    window_days=2),
        idempotency_key=idempotency_key)


def refused_enrollment(checkin, call):
    try:
        e = checkin.CreateEnrollment(enrollment_request(key("enroll-refused")),
                                     timeout=TIMEOUT, metadata=call.metadata(CASE_MANAGER))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        unmet = []
        status = status_details(error)
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                unmet += [f"{v.type} {v.subject} ({v.description})" for v in failure.violations]
        if not unmet:
            raise DemoFailure("enrollment refused without a PreconditionFailure naming the gates: "
                              + error.details())
        step(3, f"enrollment of {PARTICIPANT} in {PATHWAY} without consents refused: "
             f"{error.code().name}, unmet: " + "; ".join(unmet))
        return
    raise DemoFailure(f"enrollment {e.enrollment.enrollment_id} was created without consents")


def record_consents(consent, call):
    cl = call.metadata(CLINICIAN)

    def record(name, recipient, purposes, categories):
        c = cs.Consent(
            participant_id=PARTICIPANT, given_by=cs.CONSENT_GIVER_PARTICIPANT,
            recipient=recipient, purposes=purposes, data_categories=categories,
            directive=cs.CONSENT_DIRECTIVE_PERMIT, obtained_method=cs.OBTAINED_METHOD_WRITTEN,
            form_reference=f"form-{name}-{uuid.uuid4().hex[:8]}")
        return consent.RecordConsent(cs.RecordConsentRequest(consent=c,
                                                             idempotency_key=key(name)),
                                     timeout=TIMEOUT, metadata=cl).consent

    sharing = record("sharing", cs.Recipient(kind=cs.RECIPIENT_KIND_ROLE, id="clinician"),
                     [cs.PURPOSE_CARE_COORDINATION, cs.PURPOSE_TREATMENT],
                     [cs.DATA_CATEGORY_CHECK_IN_SUMMARIES, cs.DATA_CATEGORY_APPOINTMENT_STATUS])
    peer = record("peer", cs.Recipient(kind=cs.RECIPIENT_KIND_ROLE, id="peer_supporter"),
                  [cs.PURPOSE_PEER_SUPPORT],
                  [cs.DATA_CATEGORY_CHECK_IN_SUMMARIES,
                   cs.DATA_CATEGORY_RECOVERY_GOALS_AND_WARNING_SIGNS])
    team = record("team", cs.Recipient(kind=cs.RECIPIENT_KIND_TEAM, id="clinical-on-call"),
                  [cs.PURPOSE_TREATMENT],
                  [cs.DATA_CATEGORY_CONCERNS_AND_ESCALATIONS,
                   cs.DATA_CATEGORY_APPOINTMENT_STATUS])
    gates = consent.CheckGates(cs.CheckGatesRequest(participant_id=PARTICIPANT),
                               timeout=TIMEOUT, metadata=cl)
    if not gates.all_held:
        raise DemoFailure("consent gates not held after recording the consents: " + "; ".join(
            f"{g.gate} {ename(cs.GateReason, g.reason)}" for g in gates.results if not g.held))
    step(4, f"clinician recorded consents for {PARTICIPANT}: information sharing for care "
         f"coordination {sharing.consent_id}, agreement to peer involvement {peer.consent_id}, "
         f"concerns and appointments to clinical on-call {team.consent_id}; gates held: "
         + ", ".join(g.gate for g in gates.results))
    return sharing


def enroll(checkin, call):
    e = checkin.CreateEnrollment(enrollment_request(key("enroll")), timeout=TIMEOUT,
                                 metadata=call.metadata(CASE_MANAGER)).enrollment
    held = [r.gate.consent_gate or ci.OwnerGate.Name(r.gate.owner_gate) for r in e.gate_results
            if r.held]
    step(5, f"case manager enrolled {PARTICIPANT} in {e.pathway_key} v{e.pathway_version}: "
         f"enrollment {e.enrollment_id} {ename(ci.EnrollmentStatus, e.status)}, routine "
         f"{e.routine}, gates held: {', '.join(held)}")
    return e


def wait_for_supporter(checkin, call, peer, enrollment):
    started = time.monotonic()

    def visible():
        try:
            return checkin.GetEnrollment(
                ci.GetEnrollmentRequest(enrollment_id=enrollment.enrollment_id),
                timeout=TIMEOUT, metadata=call.metadata(peer)).enrollment
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                return None
            raise

    poll("the check-in service to learn the peer supporter from MatchStartedEvent", visible)
    step(6, f"check-in service knows {peer[1]} is {PARTICIPANT}'s active supporter (from "
         f"matching's MatchStartedEvent, after {time.monotonic() - started:.1f}s)")


def safety_answers(pathway):
    """Answers for every required field of the pathway version, chosen so that its
    immediate-safety routing rule fires (and, where it can be avoided, no other rule)."""
    rule = next((r for r in pathway.routing_rules
                 if r.category == common.CONCERN_CATEGORY_IMMEDIATE_SAFETY), None)
    if rule is None:
        raise DemoFailure(f"pathway {pathway.pathway_key} v{pathway.version} has no "
                          "immediate-safety routing rule")
    wanted = {}
    for cond in rule.all_of:
        test = cond.WhichOneof("test")
        if test == "bool_equals":
            wanted[cond.field_key] = ci.Answer(field_key=cond.field_key,
                                               bool_value=cond.bool_equals)
        elif test == "enum_in":
            wanted[cond.field_key] = ci.Answer(field_key=cond.field_key,
                                               enum_value=cond.enum_in.keys[0])
        elif test == "scale_at_most":
            wanted[cond.field_key] = ci.Answer(field_key=cond.field_key,
                                               scale_value=cond.scale_at_most)
        elif test == "scale_at_least":
            wanted[cond.field_key] = ci.Answer(field_key=cond.field_key,
                                               scale_value=cond.scale_at_least)
        elif test == "answered" and not cond.answered:
            wanted[cond.field_key] = None
    answers = []
    for field in pathway.fields:
        if field.key in wanted:
            if wanted[field.key] is not None:
                answers.append(wanted[field.key])
            continue
        if not field.required:
            continue
        spec = field.WhichOneof("spec")
        if spec == "bool_field":
            answers.append(ci.Answer(field_key=field.key, bool_value=True))
        elif spec == "enum_field":
            answers.append(ci.Answer(field_key=field.key,
                                     enum_value=field.enum_field.options[0].key))
        elif spec == "scale_field":
            answers.append(ci.Answer(field_key=field.key, scale_value=field.scale_field.max))
        elif spec == "date_field":
            answers.append(ci.Answer(field_key=field.key,
                                     date_value=date(datetime.date.today())))
        else:
            answers.append(ci.Answer(field_key=field.key, text_value="recorded in the demo"))
    return rule, answers


def answer_text(a):
    kind = a.WhichOneof("value")
    value = getattr(a, kind)
    if kind == "date_value":
        value = f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    return f"{a.field_key}={value}"


def record_check_in(checkin, call, peer, enrollment):
    pm = call.metadata(peer)
    pathway = checkin.GetPathwayVersion(
        ci.GetPathwayVersionRequest(pathway_key=enrollment.pathway_key,
                                    version=enrollment.pathway_version),
        timeout=TIMEOUT, metadata=pm).pathway
    rule, answers = safety_answers(pathway)
    request = ci.RecordCheckInRequest(
        enrollment_id=enrollment.enrollment_id, occurred_at=now_ts(),
        contact_mode=ci.CONTACT_MODE_PHONE, answers=answers, idempotency_key=key("check-in"))
    first = checkin.RecordCheckIn(request, timeout=TIMEOUT, metadata=pm)
    raised = [f"{ename(common.ConcernCategory, c.category)}/"
              f"{ename(common.ConcernSeverity, c.severity)} by rule {c.rule_id or '-'}"
              for c in first.raised_concerns]
    if not any(c.category == common.CONCERN_CATEGORY_IMMEDIATE_SAFETY
               for c in first.raised_concerns):
        raise DemoFailure(f"check-in {first.check_in.check_in_id} raised no immediate-safety "
                          f"concern (raised: {raised})")
    step(7, f"{peer[1]} recorded check-in {first.check_in.check_in_id} "
         f"({', '.join(answer_text(a) for a in answers)}): raised {', '.join(raised)}; "
         f"routine engagement stopped {first.routine_engagement_stopped}")
    retry = checkin.RecordCheckIn(request, timeout=TIMEOUT, metadata=pm)
    if retry.check_in.check_in_id != first.check_in.check_in_id:
        raise DemoFailure(f"retry with the same idempotency key returned check-in "
                          f"{retry.check_in.check_in_id}, not {first.check_in.check_in_id}")
    stored = checkin.ListCheckIns(
        ci.ListCheckInsRequest(enrollment_id=enrollment.enrollment_id, page_size=10),
        timeout=TIMEOUT, metadata=pm).check_ins
    if len(stored) != 1:
        raise DemoFailure(f"enrollment {enrollment.enrollment_id} has {len(stored)} check-ins "
                          "after one check-in and its retry, not 1")
    step(7, f"retry with the same idempotency key returned the same check-in "
         f"{retry.check_in.check_in_id} and wrote nothing (the enrollment has 1 check-in)")
    return first


def handle_concern(escalation, call, check_in):
    cl = call.metadata(CLINICIAN)
    started = time.monotonic()

    def opened():
        concerns = escalation.ListConcerns(es.ListConcernsRequest(
            participant_id=PARTICIPANT,
            categories=[common.CONCERN_CATEGORY_IMMEDIATE_SAFETY], page_size=50),
            timeout=TIMEOUT, metadata=cl).concerns
        return next((c for c in concerns
                     if c.source_check_in_id == check_in.check_in.check_in_id), None)

    c = poll("the escalation service to open the concern from check-in's event log", opened)
    step(8, f"escalation opened concern {c.concern_id} for {PARTICIPANT} after "
         f"{time.monotonic() - started:.1f}s: {ename(common.ConcernCategory, c.category)}/"
         f"{ename(common.ConcernSeverity, c.severity)} from "
         f"{ename(es.ConcernSource, c.source)}, routed to "
         f"{ename(es.TargetKind, c.current_target.kind)} {c.current_target.target_id}, "
         f"acknowledge by {c.ack_deadline.ToDatetime():%H:%M:%S} UTC")
    ack = escalation.AcknowledgeConcern(es.AcknowledgeConcernRequest(concern_id=c.concern_id),
                                        timeout=TIMEOUT, metadata=cl).concern
    step(8, f"{CLINICIAN[1]} acknowledged concern {ack.concern_id}: "
         f"{ename(es.ConcernState, ack.state)}, resolve by "
         f"{ack.resolution_deadline.ToDatetime():%H:%M:%S} UTC")
    done = escalation.ResolveConcern(
        es.ResolveConcernRequest(concern_id=c.concern_id,
                                 outcome=es.CONCERN_OUTCOME_PARTICIPANT_SAFE),
        timeout=TIMEOUT, metadata=cl).concern
    if done.state != es.CONCERN_STATE_RESOLVED:
        raise DemoFailure(f"concern {done.concern_id} is {ename(es.ConcernState, done.state)}")
    step(8, f"{CLINICIAN[1]} resolved concern {done.concern_id}: "
         f"{ename(es.ConcernState, done.state)}, "
         f"{ename(es.ConcernOutcome, done.outcome)}")


def access(consent, call, sharing):
    cl = call.metadata(CLINICIAN)
    request = cs.CheckAccessRequest(participant_id=PARTICIPANT,
                                    data_category=cs.DATA_CATEGORY_CHECK_IN_SUMMARIES,
                                    purpose=cs.PURPOSE_TREATMENT)
    what = f"{CLINICIAN[1]} reading {PARTICIPANT}'s check-in summaries for treatment"
    permit = consent.CheckAccess(request, timeout=TIMEOUT, metadata=cl)
    if permit.decision != cs.ACCESS_DECISION_PERMIT:
        raise DemoFailure(f"access denied before revocation: {permit.message}")
    step(9, f"access check, {what}: {ename(cs.AccessDecision, permit.decision)} "
         f"({ename(cs.AccessReason, permit.reason)}, consent {permit.consent_id})")
    revoked = consent.RevokeConsent(
        cs.RevokeConsentRequest(consent_id=sharing.consent_id,
                                reason="participant withdrew consent by phone"),
        timeout=TIMEOUT, metadata=cl).consent
    deny = consent.CheckAccess(request, timeout=TIMEOUT, metadata=cl)
    if deny.decision != cs.ACCESS_DECISION_DENY:
        raise DemoFailure(f"access still permitted after revoking {sharing.consent_id}: "
                          f"{deny.message}")
    step(9, f"consent {revoked.consent_id} {ename(cs.ConsentStatus, revoked.status)}; "
         f"same check right after: {ename(cs.AccessDecision, deny.decision)} "
         f"({ename(cs.AccessReason, deny.reason)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ["matching", "checkin", "consent", "escalation", "evaluation"]:
        parser.add_argument(f"--{name}", required=True, help=f"{name} gRPC address host:port")
    parser.add_argument("--peerpathctl", required=True, help="path of the peerpathctl binary")
    parser.add_argument("--signing-key", required=True, help="development signing key (PEM)")
    args = parser.parse_args()
    call = Caller(args.peerpathctl, args.signing_key)
    run_id = uuid.uuid4().hex[:8]
    channels = []
    try:
        def stub(cls, address):
            channel = grpc.insecure_channel(address)
            channels.append(channel)
            return cls(channel)

        matching = stub(mt_grpc.MatchingServiceStub, args.matching)
        checkin = stub(ci_grpc.CheckInServiceStub, args.checkin)
        consent = stub(cs_grpc.ConsentServiceStub, args.consent)
        escalation = stub(es_grpc.EscalationServiceStub, args.escalation)

        check_serving(args, call)
        reset(matching, checkin, consent, call)
        supporter = create_supporter(matching, call, run_id)
        m = match(matching, call, supporter)
        peer = ("peer_supporter", m.supporter_subject)
        refused_enrollment(checkin, call)
        sharing = record_consents(consent, call)
        enrollment = enroll(checkin, call)
        wait_for_supporter(checkin, call, peer, enrollment)
        check_in = record_check_in(checkin, call, peer, enrollment)
        handle_concern(escalation, call, check_in)
        access(consent, call, sharing)
    except grpc.RpcError as error:
        print(f"demo failed: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except (DemoFailure, subprocess.CalledProcessError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    finally:
        for channel in channels:
            channel.close()
    print("demo: the story ran end to end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
