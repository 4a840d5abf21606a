#include "common/proto_json.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"

namespace peerpath {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using Json = nlohmann::json;

// The field `key` names: its proto name or its JSON name.
const FieldDescriptor* FieldNamed(const Descriptor& type, const std::string& key) {
  if (const FieldDescriptor* f = type.FindFieldByName(key)) return f;
  for (int i = 0; i < type.field_count(); ++i) {
    if (type.field(i)->json_name() == key) return type.field(i);
  }
  return nullptr;
}

std::optional<int64_t> Integer(const Json& value, int64_t min, int64_t max) {
  int64_t n = 0;
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    n = static_cast<int64_t>(u);
  } else if (value.is_number_integer()) {
    n = value.get<int64_t>();
  } else {
    return std::nullopt;  // Floats and strings: left to protobuf's reader.
  }
  if (n < min || n > max) return std::nullopt;
  return n;
}

bool Fill(const Json& object, Message* message);

// One value of `field` (an element, for a repeated field): false when this reader does not take it.
bool SetValue(const Json& value, const FieldDescriptor* field, Message* message) {
  const Reflection* r = message->GetReflection();
  const bool repeated = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      auto n =
          Integer(value, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
      if (!n) return false;
      repeated ? r->AddInt32(message, field, static_cast<int32_t>(*n))
               : r->SetInt32(message, field, static_cast<int32_t>(*n));
      return true;
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      auto n = Integer(value, 0, std::numeric_limits<uint32_t>::max());
      if (!n) return false;
      repeated ? r->AddUInt32(message, field, static_cast<uint32_t>(*n))
               : r->SetUInt32(message, field, static_cast<uint32_t>(*n));
      return true;
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      auto n =
          Integer(value, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
      if (!n) return false;
      repeated ? r->AddInt64(message, field, *n) : r->SetInt64(message, field, *n);
      return true;
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      if (!value.is_number_unsigned() &&
          !(value.is_number_integer() && value.get<int64_t>() >= 0)) {
        return false;
      }
      repeated ? r->AddUInt64(message, field, value.get<uint64_t>())
               : r->SetUInt64(message, field, value.get<uint64_t>());
      return true;
    }
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      if (!value.is_number()) return false;  // "NaN", "Infinity": protobuf's reader.
      const double d = value.get<double>();
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
        repeated ? r->AddDouble(message, field, d) : r->SetDouble(message, field, d);
      } else {
        if (std::isfinite(d) && std::abs(d) > std::numeric_limits<float>::max()) return false;
        const float f = static_cast<float>(d);
        repeated ? r->AddFloat(message, field, f) : r->SetFloat(message, field, f);
      }
      return true;
    }
    case FieldDescriptor::CPPTYPE_BOOL:
      if (!value.is_boolean()) return false;
      repeated ? r->AddBool(message, field, value.get<bool>())
               : r->SetBool(message, field, value.get<bool>());
      return true;
    case FieldDescriptor::CPPTYPE_STRING:
      if (field->type() == FieldDescriptor::TYPE_BYTES || !value.is_string()) return false;
      repeated ? r->AddString(message, field, value.get<std::string>())
               : r->SetString(message, field, value.get<std::string>());
      return true;
    case FieldDescriptor::CPPTYPE_ENUM: {
      if (value.is_string()) {
        const EnumValueDescriptor* e =
            field->enum_type()->FindValueByName(value.get_ref<const std::string&>());
        if (e == nullptr) return false;  // Unknown names: protobuf's reader decides.
        repeated ? r->AddEnum(message, field, e) : r->SetEnum(message, field, e);
        return true;
      }
      auto n =
          Integer(value, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
      // Numbers of no value of the enum: protobuf's reader decides.
      if (!n || field->enum_type()->FindValueByNumber(static_cast<int>(*n)) == nullptr) {
        return false;
      }
      repeated ? r->AddEnumValue(message, field, static_cast<int>(*n))
               : r->SetEnumValue(message, field, static_cast<int>(*n));
      return true;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE: {
      if (!value.is_object()) return false;
      Message* sub = repeated ? r->AddMessage(message, field) : r->MutableMessage(message, field);
      return Fill(value, sub);
    }
  }
  return false;
}

bool Fill(const Json& object, Message* message) {
  const Descriptor& type = *message->GetDescriptor();
  // Well-known types (Timestamp, Duration, wrappers, Struct…) have JSON forms of their own.
  if (type.file()->package() == "google.protobuf") return false;
  const Reflection* r = message->GetReflection();
  for (const auto& [key, value] : object.items()) {
    const FieldDescriptor* field = FieldNamed(type, key);
    if (field == nullptr) continue;  // Unknown fields are ignored.
    if (value.is_null()) continue;   // null: the field keeps its default.
    if (field->is_map()) return false;
    if (const auto* oneof = field->containing_oneof();
        oneof != nullptr && r->HasOneof(*message, oneof)) {
      return false;  // Two members of one oneof: protobuf's reader refuses it.
    }
    if (field->is_repeated()) {
      if (!value.is_array()) return false;
      for (const Json& element : value) {
        if (element.is_null() || !SetValue(element, field, message)) return false;
      }
    } else if (!SetValue(value, field, message)) {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::Status ParseJsonMessage(absl::string_view json, google::protobuf::Message* message) {
  message->Clear();
  const Json object = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (object.is_object() && Fill(object, message)) return absl::OkStatus();
  // Anything else (malformed JSON too, for protobuf's own error message) the slow way.
  message->Clear();
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), message, options);
  if (status.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "not JSON of ", message->GetDescriptor()->full_name(), ": ", std::string(status.message())));
}

}  // namespace peerpath
