// A manual page (roff with the man(7) macros) from a CLI11 command tree. busctl's
// `help-man` and busd's `--help-man` print theirs with it and the build installs the
// output (shmbus-busctl.1, busd.8), so a manual cannot drift from the options it documents.
// Header-only: the two programs share nothing else, and neither links the other's code.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

namespace shmbus::man {

// `text` as roff body text: backslashes and a leading '.' or '\'' (a request) neutralised,
// `-` as \- so that options can be searched for and copied.
inline std::string escape(std::string_view text) {
  std::string out;
  bool line_start = true;
  for (const char c : text) {
    if (line_start && (c == '.' || c == '\'')) out += "\\&";
    if (c == '\\') {
      out += "\\e";
    } else if (c == '-') {
      out += "\\-";
    } else {
      out += c;
    }
    line_start = c == '\n';
  }
  return out;
}

// Text whose line breaks matter (examples): no filling.
inline std::string verbatim(std::string_view text) { return ".PP\n.nf\n" + escape(text) + "\n.fi\n"; }

// One .TP paragraph an option, except those in `skip` (names as CLI11 gives them).
inline std::string options(const CLI::App& app, std::initializer_list<std::string_view> skip = {}) {
  std::string out;
  for (const CLI::Option* o : app.get_options()) {
    bool skipped = o->get_group().empty();  // hidden
    for (std::string_view s : skip) skipped = skipped || o->get_name() == s;
    if (skipped) continue;
    const std::string name = o->get_positional() ? o->get_name() : o->get_name(false, true);
    const std::string type = o->get_type_name();  // empty for a flag
    const std::string value = type.empty() || o->get_positional() ? "" : " " + type;
    out += fmt::format(".TP\n.B {}{}\n{}\n", escape(name), escape(value), escape(o->get_description()));
  }
  return out;
}

// A .SS section a (visible) subcommand, with its options and footer, depth first.
inline void commands(const CLI::App& app, const std::string& path, std::initializer_list<std::string_view> skip,
                     std::string& out) {
  for (const CLI::App* sub : app.get_subcommands({})) {
    if (sub->get_group().empty()) continue;  // hidden
    const std::string here = path.empty() ? sub->get_name() : path + " " + sub->get_name();
    out += fmt::format(".SS \"{}\"\n{}\n", escape(here), escape(sub->get_description()));
    out += options(*sub, skip);
    if (!sub->get_footer().empty()) out += verbatim(sub->get_footer());
    commands(*sub, here, skip, out);
  }
}

struct Page {
  std::string name;         // as installed: shmbus-busctl, busd
  int section = 1;
  std::string summary;      // the NAME line after the dash
  std::string synopsis;     // roff
  std::string description;  // plain text, paragraphs split by blank lines
  std::string tail;         // roff appended after OPTIONS/COMMANDS (FILES, SEE ALSO, ...)
};

inline std::string page(const CLI::App& app, const Page& p, std::initializer_list<std::string_view> per_command_skip = {}) {
  std::string upper = p.name;
  for (char& c : upper) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  std::string out = ".\\\" Generated from the program's own command tree (tools/manpage.h); do not edit.\n";
  out += fmt::format(".TH {} {} \"\" \"shmbus\" \"shmbus manual\"\n", escape(upper), p.section);
  out += fmt::format(".SH NAME\n{} \\- {}\n", escape(p.name), escape(p.summary));
  out += ".SH SYNOPSIS\n" + p.synopsis + "\n";
  out += ".SH DESCRIPTION\n";
  std::string_view d = p.description;
  for (std::size_t at = 0; at < d.size();) {
    std::size_t end = d.find("\n\n", at);
    if (end == std::string_view::npos) end = d.size();
    out += (at ? ".PP\n" : "") + escape(d.substr(at, end - at)) + "\n";
    at = end + 2;
  }
  out += ".SH OPTIONS\n" + options(app);
  if (!app.get_subcommands({}).empty()) {
    out += ".SH COMMANDS\n";
    commands(app, "", per_command_skip, out);
  }
  return out + p.tail;
}

}  // namespace shmbus::man
