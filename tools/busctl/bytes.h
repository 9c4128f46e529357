// Bytes as an operator types and reads them: escaped delimiters (-D '\0'), base64 and hex,
// and the JSON fields of records ("value" for UTF-8 text, "value_b64" for other bytes).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "shmbus/error.h"
#include "shmbus/record.h"

namespace shmbus::busctl {

// \n \r \t \0 \\ and \xHH into their bytes; any other backslash is refused, naming it.
Result<std::string> unescape(std::string_view what, std::string_view text);

bool is_utf8(std::string_view s) noexcept;
std::string to_base64(std::string_view s);
Result<std::string> from_base64(std::string_view what, std::string_view s);
std::string to_hex(std::string_view s);

// How --format prints keys, values and header values.
enum class Encoding { kRaw, kHex, kBase64 };
Result<Encoding> parse_encoding(std::string_view text);
std::string encode(Encoding e, std::string_view s);

// Sets obj[name] to the bytes as a string when they are valid UTF-8, else obj[name + "_b64"]
// to their base64 (and no obj[name]). A null (nullopt) sets obj[name] to null.
void put_bytes(nlohmann::json& obj, const std::string& name, std::optional<Bytes> b);

// The reverse: obj[name] (a string, or null: nullopt) or obj[name + "_b64"]. Neither is
// null unless `required`; both, or a field of another type, is an error naming `where`.
Result<std::optional<std::string>> get_bytes(const nlohmann::json& obj, const std::string& name, std::string_view where,
                                             bool required);

}  // namespace shmbus::busctl
