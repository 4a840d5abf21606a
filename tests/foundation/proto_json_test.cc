// ParseJsonMessage against protobuf's own JSON reader: the same message (or the same refusal) for
// every JSON a service stores or could be handed, in every style MessageToJsonString prints.
#include "common/proto_json.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "peerpath/matching/v1/matching.pb.h"

namespace peerpath {
namespace {

namespace v1 = ::peerpath::matching::v1;
using google::protobuf::Message;

// What JsonStringToMessage (ignore_unknown_fields, as the services read) makes of `json`.
template <typename M>
std::pair<bool, M> Reference(const std::string& json) {
  M message;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  const bool ok = google::protobuf::util::JsonStringToMessage(json, &message, options).ok();
  return {ok, message};
}

// The same result (or the same refusal) as protobuf's reader for `json`.
template <typename M>
void ExpectSame(const std::string& json) {
  SCOPED_TRACE(json);
  const auto [ok, expected] = Reference<M>(json);
  M fast;
  const absl::Status status = ParseJsonMessage(json, &fast);
  EXPECT_EQ(status.ok(), ok) << status;
  if (ok) {
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(fast, expected))
        << "fast: " << fast.ShortDebugString() << "\nprotobuf: " << expected.ShortDebugString();
  }
}

std::vector<std::string> EveryStyle(const Message& message) {
  std::vector<std::string> out;
  for (bool proto_names : {false, true}) {
    for (bool enums_as_ints : {false, true}) {
      for (bool defaults : {false, true}) {
        google::protobuf::util::JsonPrintOptions options;
        options.preserve_proto_field_names = proto_names;
        options.always_print_enums_as_ints = enums_as_ints;
        options.always_print_primitive_fields = defaults;
        std::string json;
        EXPECT_TRUE(google::protobuf::util::MessageToJsonString(message, &json, options).ok());
        out.push_back(json);
      }
    }
  }
  return out;
}

v1::Preferences RandomPreferences(std::mt19937& random) {
  auto pick = [&](int n) { return static_cast<int>(random() % static_cast<unsigned>(n)); };
  v1::Preferences p;
  if (pick(2)) {
    for (int i = 0, n = pick(4); i < n; ++i) {
      p.mutable_lived_experience()->add_areas(i % 2 ? "grief" : "postpartum_depression");
    }
    p.mutable_lived_experience()->set_weight(pick(6));
  }
  if (pick(2)) {
    for (int i = 0, n = pick(3); i < n; ++i) {
      p.mutable_age_band()->add_age_bands(static_cast<v1::AgeBand>(1 + pick(6)));
    }
    p.mutable_age_band()->set_weight(pick(6));
  }
  if (pick(2)) {
    p.mutable_gender()->add_genders(pick(2) ? "female" : "non_binary");
    p.mutable_gender()->set_weight(pick(6));
  }
  if (pick(2)) {
    for (int i = 0, n = pick(3); i < n; ++i) {
      auto* w = p.mutable_availability()->add_windows();
      w->set_weekday(static_cast<v1::Weekday>(1 + pick(7)));
      w->set_start_minute(60 * pick(12));
      w->set_end_minute(60 * (12 + pick(12)));
    }
    p.mutable_availability()->set_weight(pick(6));
  }
  if (pick(2)) p.mutable_region()->set_region(pick(2) ? "north" : "région \"sud\"\n");
  if (pick(2)) {
    p.mutable_continuity()->set_prefer_previous_supporter(pick(2));
    if (pick(2)) p.mutable_continuity()->set_supporter_id("0b5e0c2a-6a52-4c2e-9c43-5b7b0f0d7a11");
  }
  return p;
}

TEST(ParseJsonMessage, ReadsEveryPrintedStyleAsProtobufDoes) {
  std::mt19937 random(2026);
  for (int i = 0; i < 300; ++i) {
    const v1::Preferences p = RandomPreferences(random);
    for (const std::string& json : EveryStyle(p)) {
      v1::Preferences fast;
      ASSERT_TRUE(ParseJsonMessage(json, &fast).ok()) << json;
      EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(fast, p))
          << json << "\n"
          << fast.ShortDebugString();
      ExpectSame<v1::Preferences>(json);
    }
  }
  v1::HardConstraints hard;
  hard.add_languages("es-MX");
  hard.add_meeting_modes(v1::MEETING_MODE_VIDEO);
  hard.add_meeting_modes(v1::MEETING_MODE_PHONE);
  hard.set_region("north");
  hard.add_genders("female");
  hard.add_excluded_supporter_ids("x");
  for (const std::string& json : EveryStyle(hard)) ExpectSame<v1::HardConstraints>(json);
  v1::CriterionExplanation line;
  line.set_criterion(v1::MATCH_CRITERION_AVAILABILITY);
  line.set_outcome(v1::CRITERION_OUTCOME_PARTIAL);
  line.set_weight(2);
  line.set_satisfaction(2.0 / 3.0);
  line.set_points(100.0 * 2 / 7);
  line.set_text("2 of 3 availability windows overlap");
  for (const std::string& json : EveryStyle(line)) ExpectSame<v1::CriterionExplanation>(json);
}

TEST(ParseJsonMessage, EdgeCasesAndRefusalsMatchProtobuf) {
  for (
      const std::string json : {
          // What the services store and what a hand-written row may hold.
          R"({"lived_experience": {"areas": ["grief"], "weight": 3}, "age_band": {"age_bands": [2], "weight": 1}})",
          R"({"livedExperience": {"areas": [], "weight": 0}})",
          R"({"age_band": {"age_bands": ["AGE_BAND_25_34", 3]}})",
          R"({})",
          R"({"unknown": {"deep": [1, 2]}, "region": {"region": "north", "extra": true}})",
          R"({"region": null, "gender": {"genders": ["female"], "weight": null}})",
          // Left to protobuf: floats, strings and out-of-range numbers where integers go, unknown
          // enum names and numbers, nulls in arrays.
          R"({"age_band": {"weight": 1.0}})",
          R"({"age_band": {"weight": 1.5}})",
          R"({"age_band": {"weight": "4"}})",
          R"({"age_band": {"weight": 4294967296}})",
          R"({"age_band": {"age_bands": ["AGE_BAND_UNHEARD_OF"]}})",
          R"({"age_band": {"age_bands": [99]}})",
          R"({"age_band": {"age_bands": [null]}})",
          R"({"availability": {"windows": [{"weekday": "MONDAY", "start_minute": 540}]}})",
          // Refused by both.
          R"({"region": {"region": 7}})",
          R"({"age_band": {"age_bands": 2}})",
          R"({"continuity": {"prefer_previous_supporter": "yes"}})",
          R"({"lived_experience": [1]})",
          R"([])",
          R"({"region": )",
          R"(not json)",
          "",
      }) {
    ExpectSame<v1::Preferences>(json);
  }
}

TEST(ParseJsonMessage, ClearsTheMessageFirst) {
  v1::CriterionExplanation line;
  line.set_text("left over");
  line.set_weight(9);
  ASSERT_TRUE(ParseJsonMessage(R"({"points": 12.5})", &line).ok());
  EXPECT_EQ(line.text(), "");
  EXPECT_EQ(line.weight(), 0);
  EXPECT_EQ(line.points(), 12.5);
}

TEST(ParseJsonMessage, MalformedJsonIsInvalidArgumentNamingTheMessage) {
  v1::Preferences p;
  const absl::Status status = ParseJsonMessage("{\"region\": ", &p);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(status.message()).find("peerpath.matching.v1.Preferences"),
            std::string::npos)
      << status;
}

}  // namespace
}  // namespace peerpath
