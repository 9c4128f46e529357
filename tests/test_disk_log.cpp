// The spill log's files: CRC32C, frames across segments, index seeks, recovery of a torn
// tail cut at every byte of the last two records, corruption in the middle named by file and
// byte, foreign files, retention, the time index and lookups by time.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <random>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/disk_log.h"
#include "bus/offset_lookup.h"
#include "tools/busd/log_writer.h"
#include "cli_util.h"
#include "test_util.h"

using namespace shmbus;
using namespace shmbus::disklog;

namespace {

class DiskLog : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/" + test::unique_bus("disklog");
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::string value_of(std::uint64_t offset) { return fmt::format("value-{}-{}", offset, std::string(offset % 37, 'x')); }

  // Frames for offsets in [from, to), keyed "k<offset>" (every 5th: null key).
  static std::vector<std::byte> frames(std::uint64_t from, std::uint64_t to, std::uint64_t step = 1) {
    std::vector<std::byte> out;
    for (std::uint64_t o = from; o < to; o += step) {
      const std::string key = fmt::format("k{}", o), value = value_of(o);
      std::string payload = (o % 5 == 0 ? std::string() : key) + value;
      append_frame(out, o, static_cast<std::int64_t>(o) * 1000, o % 5 == 0 ? kNullKeyLen : static_cast<std::uint32_t>(key.size()), 0,
                   static_cast<std::uint32_t>(value.size()), reinterpret_cast<const std::byte*>(payload.data()));
    }
    return out;
  }

  LogWriter writer(const std::string& dir, std::uint64_t segment_bytes = 64 << 20, std::vector<std::string>* reports = nullptr) {
    SpillConfig c;
    c.enabled = true;
    c.segment_bytes = segment_bytes;
    c.fsync = FsyncPolicy::kNever;
    auto w = LogWriter::open(dir, c, 0600, [&](const std::string& m) {
      if (reports) reports->push_back(m);
    });
    EXPECT_TRUE(w) << w.error().message;
    return std::move(*w);
  }

  // Every record from `from` on, as (offset, value).
  static std::vector<std::pair<std::uint64_t, std::string>> read_all(LogReader& r, std::uint64_t from, std::uint64_t limit = ~0ull) {
    std::vector<std::pair<std::uint64_t, std::string>> out;
    for (int guard = 0; guard < 100000; ++guard) {
      auto next = r.read(from, limit, 1 << 16, [&](const FrameView& v) {
        const std::uint64_t klen = v.header.key_len == kNullKeyLen ? 0 : v.header.key_len;
        out.push_back({v.header.offset, std::string(reinterpret_cast<const char*>(v.payload.data()) + klen, v.header.value_len)});
        return true;
      });
      EXPECT_TRUE(next) << next.error().message;
      if (!next || *next == from) break;
      from = *next;
    }
    return out;
  }

  // Changes a segment file's header in place (its CRC made right again).
  static void rewrite_file_header(const std::string& path, const std::function<void(FileHeader&)>& change) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    FileHeader h{};
    f.read(reinterpret_cast<char*>(&h), sizeof h);
    change(h);
    h.crc = crc32c(&h, offsetof(FileHeader, crc));
    f.seekp(0);
    f.write(reinterpret_cast<const char*>(&h), sizeof h);
  }

  std::string dir_;
};

TEST(Crc32c, KnownVectorAndTheHardwarePathAgreesWithBoost) {
  const std::string s = "123456789";
  EXPECT_EQ(crc32c(s.data(), s.size()), 0xE3069283u);  // the CRC-32C check value
  EXPECT_EQ(crc32c_boost(s.data(), s.size()), 0xE3069283u);
  std::mt19937_64 rng(7);
  for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 63u, 64u, 1000u, 4097u}) {
    std::vector<unsigned char> buf(n);
    for (auto& b : buf) b = static_cast<unsigned char>(rng());
    EXPECT_EQ(crc32c(buf.data(), n), crc32c_boost(buf.data(), n)) << n;
  }
}

// crc32c() runs three streams at once from 192 bytes (blocks of 64, then of 256 bytes, joined
// by a carry-less multiply): every length around the block edges, at every alignment, against
// one stream and against Boost.
TEST(Crc32c, ThreeStreamsAgreeWithOneAtEveryLengthAndAlignment) {
  std::mt19937_64 rng(11);
  std::vector<unsigned char> buf(10'000);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  std::size_t checked = 0;
  for (std::size_t align = 0; align < 8; ++align) {
    for (std::size_t n = 0; n <= 2'400; ++n) {
      const unsigned char* p = buf.data() + align;
      const std::uint32_t one = crc32c_one_stream(p, n);
      ASSERT_EQ(crc32c(p, n), one) << "length " << n << ", alignment " << align;
      if (n % 97 == 0) {
        ASSERT_EQ(crc32c_boost(p, n), one) << "length " << n;
      }
      ++checked;
    }
  }
  for (std::size_t n : {3'071u, 3'072u, 3'073u, 9'991u}) EXPECT_EQ(crc32c(buf.data(), n), crc32c_boost(buf.data(), n)) << n;
  EXPECT_GT(checked, 19'000u);
}

TEST_F(DiskLog, RecordsRoundTripAcrossSegmentsAndSeeksUseTheIndex) {
  {
    LogWriter w = writer(dir_, 8192);
    // Two appends, and a gap (offsets 3000..3099 aborted, never spilled).
    ASSERT_TRUE(w.append(frames(0, 3000)));
    ASSERT_TRUE(w.append(frames(3100, 5000)));
    EXPECT_EQ(w.next_offset(), 5000u);
    EXPECT_EQ(w.start_offset(), 0u);
  }
  auto segs = list_segments(dir_);
  ASSERT_TRUE(segs);
  EXPECT_GT(segs->size(), 10u) << "segments roll at 8 KiB";
  for (auto base : *segs) {
    auto r = scan_segment(segment_path(dir_, base, "log"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->end, ScanEnd::kClean) << r->problem;
    EXPECT_LE(r->file_size, 8192u + 200);
    EXPECT_EQ(r->first_offset, base);
  }
  LogReader reader(dir_);
  auto all = read_all(reader, 0);
  ASSERT_EQ(all.size(), 4900u);
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::uint64_t want = i < 3000 ? i : i + 100;
    ASSERT_EQ(all[i].first, want);
    ASSERT_EQ(all[i].second, value_of(want));
  }
  // Starting anywhere: in the middle of a segment, in the gap, at the end.
  LogReader r2(dir_);
  for (std::uint64_t from : {1u, 777u, 2999u, 3000u, 3050u, 3100u, 4999u}) {
    auto got = read_all(r2, from);
    ASSERT_FALSE(got.empty()) << from;
    EXPECT_EQ(got.front().first, from >= 3000 && from < 3100 ? 3100u : from);
    EXPECT_EQ(got.back().first, 4999u);
  }
  EXPECT_TRUE(read_all(r2, 5000).empty());
  // A limit stops the read before it.
  auto limited = read_all(r2, 10, 20);
  ASSERT_EQ(limited.size(), 10u);
  EXPECT_EQ(limited.back().first, 19u);
  // Reopened, the writer continues after the last record.
  LogWriter w = writer(dir_, 8192);
  EXPECT_EQ(w.next_offset(), 5000u);
  ASSERT_TRUE(w.append(frames(5000, 5010)));
  EXPECT_EQ(read_all(r2, 4995).size(), 15u);
}

TEST_F(DiskLog, ATornTailCutAtEveryByteOfTheLastTwoRecordsRecoversExactlyTheWholeRecordsBeforeTheCut) {
  const std::string src = dir_ + "/src";
  {
    LogWriter w = writer(src);
    ASSERT_TRUE(w.append(frames(0, 20)));
  }
  const std::string seg = segment_path(src, 0, "log");
  std::vector<std::uint64_t> starts;  // byte position of each record
  auto full = scan_segment(seg, [&](const FrameView& v) { starts.push_back(v.position); });
  ASSERT_TRUE(full);
  ASSERT_EQ(starts.size(), 20u);
  const std::uint64_t size = full->file_size;
  int cuts = 0;
  for (std::uint64_t cut = starts[18]; cut < size; ++cut) {
    const std::string d = fmt::format("{}/cut{}", dir_, cut);
    std::filesystem::create_directories(d);
    std::filesystem::copy_file(seg, segment_path(d, 0, "log"));
    ASSERT_EQ(::truncate(segment_path(d, 0, "log").c_str(), static_cast<off_t>(cut)), 0);
    const std::uint64_t whole = cut >= starts[19] ? 19 : 18;  // records wholly before the cut
    const std::uint64_t boundary = starts[whole];
    std::vector<std::string> reports;
    {
      LogWriter w = writer(d, 64 << 20, &reports);
      EXPECT_EQ(w.next_offset(), whole) << "cut at " << cut;
      // A reader stops at the torn tail without an error.
      LogReader r(d);
      EXPECT_EQ(read_all(r, 0).size(), whole) << "cut at " << cut;
    }
    struct stat st{};
    ASSERT_EQ(::stat(segment_path(d, 0, "log").c_str(), &st), 0);
    EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), boundary) << "cut at " << cut;
    if (cut != boundary) {
      ASSERT_EQ(reports.size(), 1u) << "cut at " << cut;
      EXPECT_NE(reports[0].find("torn tail at byte " + std::to_string(boundary)), std::string::npos) << reports[0];
    } else {
      EXPECT_TRUE(reports.empty()) << "a cut on a record boundary is a clean file";
    }
    auto again = scan_segment(segment_path(d, 0, "log"));
    ASSERT_TRUE(again);
    EXPECT_EQ(again->end, ScanEnd::kClean);
    EXPECT_EQ(again->records, whole);
    // The next append continues at the next offset, right after the last whole record.
    {
      LogWriter w = writer(d);
      ASSERT_TRUE(w.append(frames(whole, whole + 1)));
    }
    LogReader r(d);
    auto all = read_all(r, 0);
    ASSERT_EQ(all.size(), whole + 1);
    EXPECT_EQ(all.back().first, whole);
    std::filesystem::remove_all(d);
    ++cuts;
  }
  EXPECT_EQ(cuts, static_cast<int>(size - starts[18]));
}

TEST_F(DiskLog, AFlippedByteInTheMiddleIsAnErrorNamingTheFileAndTheByte) {
  {
    LogWriter w = writer(dir_);
    ASSERT_TRUE(w.append(frames(0, 40)));
  }
  const std::string seg = segment_path(dir_, 0, "log");
  std::vector<std::uint64_t> starts;
  ASSERT_TRUE(scan_segment(seg, [&](const FrameView& v) { starts.push_back(v.position); }));
  for (std::uint64_t flip : {starts[20] + 45, starts[20] + 2, starts[20] + 9}) {  // value, size, offset
    std::filesystem::remove(dir_ + "/copy.log");
    const std::string d = dir_ + "/flip";
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    const std::string path = segment_path(d, 0, "log");
    std::filesystem::copy_file(seg, path);
    {
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(static_cast<std::streamoff>(flip));
      char c = 0;
      f.read(&c, 1);
      c = static_cast<char>(c ^ 0x10);
      f.seekp(static_cast<std::streamoff>(flip));
      f.write(&c, 1);
    }
    const std::string where = fmt::format("{}: corrupt record at byte {}", path, starts[20]);
    auto r = scan_segment(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->end, ScanEnd::kCorrupt) << "flip at " << flip;
    EXPECT_EQ(r->records, 20u);
    EXPECT_NE(r->problem.find(where), std::string::npos) << r->problem;
    EXPECT_NE(r->problem.find("after offset 19"), std::string::npos) << r->problem;
    // A reader returns the good records, then stops with the error (never bad data).
    LogReader reader(d);
    std::vector<std::uint64_t> got;
    Result<std::uint64_t> res = std::uint64_t{0};
    std::uint64_t from = 0;
    for (int i = 0; i < 100; ++i) {
      res = reader.read(from, ~0ull, 1 << 20, [&](const FrameView& v) {
        got.push_back(v.header.offset);
        return true;
      });
      if (!res || *res == from) break;
      from = *res;
    }
    ASSERT_FALSE(res);
    EXPECT_NE(res.error().message.find(where), std::string::npos) << res.error().message;
    EXPECT_EQ(got.size(), 20u);
    // busd refuses to append after it, and says why.
    SpillConfig c;
    c.enabled = true;
    auto w = LogWriter::open(d, c, 0600, {});
    ASSERT_FALSE(w);
    EXPECT_NE(w.error().message.find(where), std::string::npos) << w.error().message;
    // busctl log dump: exit 1 and the same words.
    auto cli = test::busctl({"log", "dump", path, "--summary"});
    EXPECT_EQ(cli.code, 1);
    EXPECT_NE(cli.err.find(where), std::string::npos) << cli.err;
    EXPECT_NE(cli.out.find("corrupt"), std::string::npos) << cli.out;
  }
  auto ok = test::busctl({"log", "dump", seg});
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.out.find("offset           39"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("40 records (0..39)"), std::string::npos) << ok.out;
}

TEST_F(DiskLog, ForeignAndWrongVersionFilesAreRefusedNotParsed) {
  const std::string path = segment_path(dir_, 0, "log");
  {
    std::ofstream f(path, std::ios::binary);
    f << std::string(100, 'z');
  }
  auto r = scan_segment(path);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->end, ScanEnd::kCorrupt);
  EXPECT_NE(r->problem.find("not a shmbus log segment"), std::string::npos) << r->problem;
  auto cli = test::busctl({"log", "dump", path});
  EXPECT_EQ(cli.code, 1);
  EXPECT_NE(cli.err.find("bad magic"), std::string::npos) << cli.err;
  auto missing = test::busctl({"log", "dump", dir_ + "/nope.log"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("nope.log"), std::string::npos) << missing.err;
  // A file header of another version.
  {
    LogWriter w = writer(dir_ + "/v");
    ASSERT_TRUE(w.append(frames(0, 3)));
  }
  const std::string v = segment_path(dir_ + "/v", 0, "log");
  rewrite_file_header(v, [](FileHeader& h) { h.major = 9; });
  auto rv = scan_segment(v);
  ASSERT_TRUE(rv);
  EXPECT_EQ(rv->end, ScanEnd::kCorrupt);
  EXPECT_NE(rv->problem.find("version 9"), std::string::npos) << rv->problem;
}

TEST_F(DiskLog, RetentionByBytesDeletesWholeOldSegmentsAndReadersMoveOn) {
  SpillConfig c;
  c.enabled = true;
  c.segment_bytes = 4096;
  c.retention_bytes = 16384;
  c.fsync = FsyncPolicy::kNever;
  auto w = LogWriter::open(dir_, c, 0600, {});
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->append(frames(0, 2000)));
  const std::size_t removed = w->enforce_retention(0);
  EXPECT_GT(removed, 0u);
  EXPECT_GE(w->bytes(), 16384u - 4096);
  EXPECT_LE(w->bytes(), 16384u + 4096 + 200);
  const std::uint64_t start = *w->start_offset();
  EXPECT_GT(start, 0u);
  auto segs = list_segments(dir_);
  ASSERT_TRUE(segs);
  EXPECT_EQ(segs->front(), start);
  LogReader r(dir_);
  auto got = read_all(r, 0);  // from before the start: begins at the oldest kept
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.front().first, start);
  EXPECT_EQ(got.back().first, 1999u);
}

}  // namespace

namespace {

TEST_F(DiskLog, RetentionByAgeDeletesSealedSegmentsOlderThanItNeverTheOpenOne) {
  SpillConfig c;
  c.enabled = true;
  c.segment_bytes = 4096;
  c.retention_ms = 60'000;
  c.fsync = FsyncPolicy::kNever;
  auto w = LogWriter::open(dir_, c, 0600, {});
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->append(frames(0, 300)));
  auto segs = list_segments(dir_);
  ASSERT_TRUE(segs);
  ASSERT_GE(segs->size(), 4u);
  const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_EQ(w->enforce_retention(now), 0u) << "nothing is a minute old yet";
  // The first two segments were last written two minutes ago.
  const timespec old[2] = {{time(nullptr) - 120, 0}, {time(nullptr) - 120, 0}};
  for (std::size_t i = 0; i < 2; ++i) ASSERT_EQ(::utimensat(AT_FDCWD, segment_path(dir_, (*segs)[i], "log").c_str(), old, 0), 0);
  EXPECT_EQ(w->enforce_retention(now), 2u);
  EXPECT_EQ(w->start_offset(), (*segs)[2]);
  EXPECT_FALSE(std::filesystem::exists(segment_path(dir_, (*segs)[0], "index")));
  EXPECT_FALSE(std::filesystem::exists(segment_path(dir_, (*segs)[0], "timeindex")));
  // Even the open segment aged: it stays (retention deletes whole sealed segments only).
  for (std::size_t i = 2; i < segs->size(); ++i)
    ASSERT_EQ(::utimensat(AT_FDCWD, segment_path(dir_, (*segs)[i], "log").c_str(), old, 0), 0);
  EXPECT_EQ(w->enforce_retention(now), segs->size() - 3);
  EXPECT_EQ(list_segments(dir_)->size(), 1u);
  EXPECT_EQ(w->next_offset(), 300u);
}

}  // namespace

namespace {

TEST_F(DiskLog, NullValueFrameIsARecordAndAnyOtherAttributeIsDamage) {
  std::vector<std::byte> f;
  const std::string key = "k";
  append_frame(f, 0, 1, 1, 0, 0, reinterpret_cast<const std::byte*>(key.data()), kAttrNullValue);
  append_frame(f, 1, 1, 1, 0, 0, reinterpret_cast<const std::byte*>(key.data()));
  const std::string binary = "k\xff\xfe";  // key "k", a value that is not UTF-8
  append_frame(f, 2, 1, 1, 0, 2, reinterpret_cast<const std::byte*>(binary.data()));
  {
    LogWriter w = writer(dir_);
    ASSERT_TRUE(w.append(f));
  }
  std::vector<std::pair<std::uint64_t, std::uint32_t>> seen;
  LogReader reader(dir_);
  auto next = reader.read(0, ~0ull, 1 << 20, [&](const FrameView& v) {
    seen.emplace_back(frame_last(v.header), v.header.attributes);
    return true;
  });
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, 3u);
  EXPECT_EQ(seen, (std::vector<std::pair<std::uint64_t, std::uint32_t>>{{0, kAttrNullValue}, {1, 0}, {2, 0}}));
  auto dump = test::busctl({"--json", "log", "dump", segment_path(dir_, 0, "log")});
  ASSERT_EQ(dump.code, 0) << dump.err;
  auto j = nlohmann::json::parse(dump.out);
  EXPECT_TRUE(j["records_list"][0]["value"].is_null());
  EXPECT_EQ(j["records_list"][1]["value"], "");
  EXPECT_EQ(j["records_list"][2]["value_b64"], "//4=") << "bytes are never turned into U+FFFD";
  EXPECT_FALSE(j["records_list"][2].contains("value"));
  // An attribute that is neither a gap nor kAttrNullValue, or a null value with bytes: damage.
  for (std::uint32_t attr : {8u, kAttrNullValue}) {
    const std::string kv = "kv", sub = fmt::format("{}/bad{}", dir_, attr);
    std::vector<std::byte> whole = f;
    append_frame(whole, 3, 1, 1, 0, 1, reinterpret_cast<const std::byte*>(kv.data()), attr);
    {
      LogWriter w = writer(sub);
      ASSERT_TRUE(w.append(whole));
    }
    auto r = scan_segment(segment_path(sub, 0, "log"));
    ASSERT_TRUE(r);
    EXPECT_NE(r->end, ScanEnd::kClean) << "attributes " << attr;
    EXPECT_EQ(r->records, 3u) << "attributes " << attr;
  }
}

TEST_F(DiskLog, AFileOfFormatMinorZeroStillReadsItsEmptyValuesAsEmptyNotNull) {
  // Minor 0 (before kAttrNullValue): frames with attributes 0 only, empty values among them.
  std::vector<std::byte> f;
  const std::string kv = "kv";
  append_frame(f, 0, 1, 1, 0, 0, reinterpret_cast<const std::byte*>(kv.data()));  // key "k", empty value
  append_frame(f, 1, 1, 1, 0, 1, reinterpret_cast<const std::byte*>(kv.data()));  // key "k", value "v"
  {
    LogWriter w = writer(dir_);
    ASSERT_TRUE(w.append(f));
  }
  const std::string path = segment_path(dir_, 0, "log");
  rewrite_file_header(path, [](FileHeader& h) {
    EXPECT_EQ(h.minor, kLogMinor);
    h.minor = 0;
  });
  auto scan = scan_segment(path);
  ASSERT_TRUE(scan);
  EXPECT_EQ(scan->end, ScanEnd::kClean) << scan->problem;
  EXPECT_EQ(scan->records, 2u);
  std::vector<std::pair<std::uint32_t, std::uint32_t>> seen;  // (value length, attributes)
  LogReader reader(dir_);
  auto next = reader.read(0, ~0ull, 1 << 20, [&](const FrameView& v) {
    seen.emplace_back(v.header.value_len, v.header.attributes);
    return true;
  });
  ASSERT_TRUE(next) << next.error().message;
  EXPECT_EQ(*next, 2u);
  EXPECT_EQ(seen, (std::vector<std::pair<std::uint32_t, std::uint32_t>>{{0, 0}, {1, 0}}));
  auto dump = test::busctl({"--json", "log", "dump", path});
  ASSERT_EQ(dump.code, 0) << dump.err;
  auto j = nlohmann::json::parse(dump.out);
  EXPECT_EQ(j["records_list"][0]["value"], "") << "an old empty value is not a tombstone";
  EXPECT_EQ(j["records_list"][1]["value"], "v");
  // busd reopening the old log appends after it, null values included.
  LogWriter w = writer(dir_);
  EXPECT_EQ(w.next_offset(), 2u);
  std::vector<std::byte> more;
  append_frame(more, 2, 1, 1, 0, 0, reinterpret_cast<const std::byte*>(kv.data()), kAttrNullValue);
  ASSERT_TRUE(w.append(more));
  seen.clear();
  ASSERT_TRUE(reader.read(0, ~0ull, 1 << 20, [&](const FrameView& v) {
    seen.emplace_back(v.header.value_len, v.header.attributes);
    return true;
  }));
  EXPECT_EQ(seen, (std::vector<std::pair<std::uint32_t, std::uint32_t>>{{0, 0}, {1, 0}, {0, kAttrNullValue}}));
}

TEST_F(DiskLog, GapFramesAccountForLostAndAbortedOffsets) {
  {
    LogWriter w = writer(dir_);
    std::vector<std::byte> f = frames(0, 10);
    append_gap(f, 10, 5, kAttrAborted);  // 10..14: dead producers' claims
    auto more = frames(15, 20);
    f.insert(f.end(), more.begin(), more.end());
    append_gap(f, 20, 100, kAttrLost);  // 20..119: lapped before they were spilled
    ASSERT_TRUE(w.append(f));
    EXPECT_EQ(w.next_offset(), 120u);
  }
  auto r = scan_segment(segment_path(dir_, 0, "log"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->end, ScanEnd::kClean) << r->problem;
  EXPECT_EQ(r->last_offset, 119u);
  LogWriter w = writer(dir_);
  EXPECT_EQ(w.next_offset(), 120u) << "a gap at the end still moves the next offset";
  LogReader reader(dir_);
  std::vector<std::tuple<std::uint64_t, std::uint64_t, std::uint32_t>> seen;  // first, last, attributes
  auto next = reader.read(12, ~0ull, 1 << 20, [&](const FrameView& v) {
    seen.emplace_back(v.header.offset, frame_last(v.header), v.header.attributes);
    return true;
  });
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, 120u);
  ASSERT_EQ(seen.size(), 7u);  // the aborted gap reaching past 12, records 15..19, the lost gap
  EXPECT_EQ(seen.front(), std::make_tuple(10ull, 14ull, kAttrAborted));
  EXPECT_EQ(seen.back(), std::make_tuple(20ull, 119ull, kAttrLost));
  auto dump = test::busctl({"log", "dump", segment_path(dir_, 0, "log")});
  EXPECT_EQ(dump.code, 0) << dump.err;
  EXPECT_NE(dump.out.find("10..14"), std::string::npos) << dump.out;
  EXPECT_NE(dump.out.find("aborted"), std::string::npos) << dump.out;
  EXPECT_NE(dump.out.find("20..119"), std::string::npos) << dump.out;
}

}  // namespace

namespace {

// With fsync=interval a power loss can leave damage anywhere after the last fsync, with
// valid frames after it: recovery truncates there (a torn tail) instead of refusing the log;
// damage before the last fsync is still corruption.
TEST_F(DiskLog, DamagePastTheLastFsyncIsATornTailDamageBeforeItIsCorruption) {
  std::vector<std::uint64_t> starts;
  for (const bool before_sync : {false, true}) {
    const std::string d = dir_ + (before_sync ? "/before" : "/after");
    SpillConfig c;
    c.enabled = true;
    c.fsync = FsyncPolicy::kInterval;
    {
      auto w = LogWriter::open(d, c, 0600, {});
      ASSERT_TRUE(w);
      ASSERT_TRUE(w->append(frames(0, 20)));
      ASSERT_TRUE(w->sync());  // the watermark: 20 records are on the disk
      ASSERT_TRUE(w->append(frames(20, 40)));
    }
    const std::string path = segment_path(d, 0, "log");
    starts.clear();
    ASSERT_TRUE(scan_segment(path, [&](const FrameView& v) { starts.push_back(v.position); }));
    const std::uint64_t victim = before_sync ? 10 : 30;
    {
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(starts[victim] + 44));
      f.write("\0\0\0\0", 4);  // a zeroed page, as a power loss leaves
    }
    std::vector<std::string> reports;
    auto w = LogWriter::open(d, c, 0600, [&](const std::string& m) { reports.push_back(m); });
    if (before_sync) {
      ASSERT_FALSE(w) << "damage in synced data is corruption";
      EXPECT_NE(w.error().message.find("corrupt record at byte " + std::to_string(starts[10])), std::string::npos) << w.error().message;
    } else {
      ASSERT_TRUE(w) << w.error().message;
      EXPECT_EQ(w->next_offset(), 30u) << "truncated at the damaged record, which was never synced";
      ASSERT_EQ(reports.size(), 1u);
      EXPECT_NE(reports[0].find("past the last fsync"), std::string::npos) << reports[0];
    }
  }
}

}  // namespace

namespace {

// Frames of 80 bytes (no key, a 40-byte value) for offsets first, first + 1, ... stamped `ts`.
std::vector<std::byte> stamped_frames(const std::vector<std::int64_t>& ts, std::uint64_t first = 0) {
  std::vector<std::byte> out;
  const std::string value(40, 'v');
  for (std::size_t i = 0; i < ts.size(); ++i)
    append_frame(out, first + i, ts[i], kNullKeyLen, 0, static_cast<std::uint32_t>(value.size()),
                 reinterpret_cast<const std::byte*>(value.data()));
  return out;
}

// Timestamps 1000 ns apart from 1'000'000, one a record.
std::vector<std::int64_t> rising(std::size_t n) {
  std::vector<std::int64_t> ts(n);
  for (std::size_t i = 0; i < n; ++i) ts[i] = 1'000'000 + static_cast<std::int64_t>(i) * 1000;
  return ts;
}

// Writes records stamped `ts` from offset 0 into a log in `dir` (segments of `segment_bytes`)
// as busd does; returns its segments' base offsets.
std::vector<std::uint64_t> write_stamped(const std::string& dir, const std::vector<std::int64_t>& ts, std::uint64_t segment_bytes) {
  SpillConfig c;
  c.enabled = true;
  c.segment_bytes = segment_bytes;
  c.fsync = FsyncPolicy::kNever;
  {
    auto w = LogWriter::open(dir, c, 0600, {});
    EXPECT_TRUE(w) << w.error().message;
    if (w) {
      EXPECT_TRUE(w->append(stamped_frames(ts)));
    }
  }
  auto segs = list_segments(dir);
  EXPECT_TRUE(segs);
  return segs ? *segs : std::vector<std::uint64_t>{};
}

// The first offset whose timestamp is >= t, as a scan of everything finds it (none: ~0).
std::uint64_t first_at_or_after(const std::vector<std::int64_t>& ts, std::int64_t t) {
  for (std::size_t i = 0; i < ts.size(); ++i)
    if (ts[i] >= t) return i;
  return ~std::uint64_t{0};
}

// What a lookup may read with a time index: the first record of a few files (the search over
// files), then one index interval of 80-byte frames, plus a frame either side.
constexpr std::uint64_t kOneInterval = kIndexInterval / 80 + 2;

// Looks `t` up in the log at `dir` and checks it against a scan of `ts`.
void expect_lookup(const std::string& dir, const std::vector<std::int64_t>& ts, std::int64_t t, std::uint64_t max_frames,
                   LookupStats* out = nullptr) {
  LookupStats st;
  auto m = find_in_disk_log(dir, ts.size(), t, &st);
  ASSERT_TRUE(m) << m.error().message;
  const std::uint64_t want = first_at_or_after(ts, t);
  if (want == ~std::uint64_t{0}) {
    EXPECT_FALSE(*m) << "time " << t << ": found offset " << (*m)->offset;
  } else {
    ASSERT_TRUE(*m) << "time " << t << ": none found, offset " << want << " expected";
    EXPECT_EQ((*m)->offset, want) << "time " << t;
    EXPECT_EQ((*m)->timestamp_ns, ts[want]) << "time " << t;
  }
  EXPECT_LE(st.disk_frames, max_frames) << "time " << t << ": frames read";
  if (out) *out = st;
}

TEST_F(DiskLog, TheTimeIndexBoundsALookupByTimeToOneIndexIntervalOfItsSegment) {
  const std::vector<std::int64_t> ts = rising(20000);
  const auto segs = write_stamped(dir_, ts, 256 << 10);
  ASSERT_GE(segs.size(), 5u);
  for (auto base : segs) {
    // One time index entry beside each .index entry (16 bytes against 8), owner-only.
    struct stat ti{}, ix{};
    ASSERT_EQ(::stat(segment_path(dir_, base, "timeindex").c_str(), &ti), 0) << base;
    ASSERT_EQ(::stat(segment_path(dir_, base, "index").c_str(), &ix), 0) << base;
    EXPECT_EQ(ti.st_size, ix.st_size * 2) << base;
    if (base != segs.back()) {
      EXPECT_GT(ti.st_size, 16 * 50) << base;
    }
    EXPECT_EQ(ti.st_mode & 0777, 0600u) << base;
  }
  const std::uint64_t bound = segs.size() + kOneInterval;
  for (std::int64_t t : {std::int64_t{0}, ts[0], ts[1] - 1, ts[777], ts[5000] + 1, ts[12345], ts[16000] - 999, ts[19999],
                         ts[19999] + 1, std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::min()}) {
    LookupStats st;
    expect_lookup(dir_, ts, t, bound, &st);
    EXPECT_EQ(st.disk_full_scans, 0u) << t;
  }
}

TEST_F(DiskLog, TimestampsGoingBackwardsStillFindTheFirstRecordAtOrAfterTheTimeInOffsetOrder) {
  // Stamps that wander ±10 records, a run of a stopped clock's (far in the past), and one
  // record from the future: the max-so-far in each entry keeps the search exact.
  std::mt19937_64 rng(11);
  std::vector<std::int64_t> ts(12000);
  for (std::size_t i = 0; i < ts.size(); ++i)
    ts[i] = 1'000'000 + static_cast<std::int64_t>(i) * 1000 + static_cast<std::int64_t>(rng() % 20001) - 10000;
  for (std::size_t i = 3000; i < 3200; ++i) ts[i] = 5;
  ts[9000] = 1'000'000 + 11000 * 1000;
  {
    LogWriter w = writer(dir_);  // one segment: the index decides everything
    ASSERT_TRUE(w.append(stamped_frames(ts)));
  }
  ASSERT_EQ(list_segments(dir_)->size(), 1u);
  const std::int64_t top = *std::max_element(ts.begin(), ts.end());
  for (int i = 0; i < 300; ++i) {
    const std::int64_t t = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(top + 2));
    expect_lookup(dir_, ts, t, 1 + kOneInterval);
  }
  for (std::int64_t t : {std::int64_t{6}, ts[3199], ts[9000], ts[9000] + 1, ts[8999] + 1, ts[9001]})
    expect_lookup(dir_, ts, t, 1 + kOneInterval);
}

// The time index of a segment, read raw (every entry, checked or not).
std::vector<TimeIndexEntry> raw_time_index(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<TimeIndexEntry> out;
  TimeIndexEntry e{};
  while (f.read(reinterpret_cast<char*>(&e), sizeof e)) out.push_back(e);
  return out;
}

void write_raw(const std::string& path, const void* data, std::size_t n) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

TEST_F(DiskLog, ADamagedStaleOrForgedTimeIndexCostsAScanNeverAWrongRecord) {
  const std::vector<std::int64_t> ts = rising(12000);
  const auto segs = write_stamped(dir_, ts, 256 << 10);
  ASSERT_GE(segs.size(), 3u);
  const std::string path = segment_path(dir_, segs[1], "timeindex");
  const std::vector<TimeIndexEntry> good = raw_time_index(path);
  ASSERT_GT(good.size(), 20u);
  // The time of a record in the middle of segment 1, between index entries k and k + 1.
  const std::size_t k = good.size() / 2;
  const std::uint64_t target = segs[1] + good[k].relative_offset + 5;
  const std::int64_t t = ts[target] - 1;
  const std::uint64_t bound = segs.size() + kOneInterval;
  {
    LookupStats st;
    expect_lookup(dir_, ts, t, bound, &st);
    EXPECT_EQ(st.disk_full_scans, 0u);
  }
  // With a time index that cannot be believed (from some entry on, or at all): at most the
  // whole segment, and the interval tried first.
  const std::uint64_t whole_segment = segs[2] - segs[1] + segs.size() + 2 * kOneInterval;
  struct Case {
    const char* what;
    std::function<void(std::vector<TimeIndexEntry>&)> change;  // then written back; nullptr: the file removed
    bool scans;                                                 // the segment is scanned from its start
    std::size_t torn = 0;                                       // bytes of one more entry after them
  };
  auto forge = [](TimeIndexEntry& e, std::int64_t max_before, std::uint32_t rel) { e = time_index_entry(max_before, rel); };
  const Case cases[] = {
      {"no .timeindex (a log written before it)", nullptr, true},
      {"a flipped bit in the entry before the record", [&](auto& v) { v[k].max_before ^= 1; }, false},
      {"a flipped bit in the first entry", [&](auto& v) { v[0].relative_offset ^= 4; }, true},
      {"forged: an offset past the segment's end", [&](auto& v) { forge(v[k - 3], v[k - 3].max_before, 1u << 30); }, false},
      {"forged: offsets that go down", [&](auto& v) { forge(v[k - 3], v[k - 3].max_before, v[k - 5].relative_offset); }, false},
      {"forged: a largest timestamp that goes down",
       [&](auto& v) { forge(v[k - 2], v[k - 4].max_before - 1, v[k - 2].relative_offset); }, false},
      {"forged: a first entry that is not the segment's first offset", [&](auto& v) { forge(v[0], kNoTimestamp, 1); }, true},
      {"forged: promises a record at or after the time before entry k, none is there",
       [&](auto& v) { forge(v[k], v[k + 1].max_before, v[k].relative_offset); }, true},
      {"stale: entries of a longer log (cut short by a torn tail since)",
       [&](auto& v) {
         const TimeIndexEntry last = v.back();
         for (std::uint32_t i = 1; i <= 5; ++i)
           v.push_back(time_index_entry(last.max_before + i * 100'000, last.relative_offset + i * 100'000));
       },
       false},
      {"cut short inside an entry", [&](auto& v) { v.resize(k - 1); }, false, 7},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    if (!c.change) {
      ASSERT_EQ(::unlink(path.c_str()), 0);
    } else {
      std::vector<TimeIndexEntry> v = good;
      c.change(v);
      v.push_back(good[std::min(v.size(), good.size() - 1)]);  // whose first `torn` bytes stay
      write_raw(path, v.data(), (v.size() - 1) * sizeof(TimeIndexEntry) + c.torn);
    }
    LookupStats st;
    expect_lookup(dir_, ts, t, whole_segment, &st);
    EXPECT_EQ(st.disk_full_scans, c.scans ? 1u : 0u);
    // Another segment's lookups are untouched.
    expect_lookup(dir_, ts, ts[segs[2] + 7], bound);
    write_raw(path, good.data(), good.size() * sizeof(TimeIndexEntry));
  }
}

TEST_F(DiskLog, TheWriterRebuildsTheLastSegmentsTimeIndexAfterACrash) {
  std::vector<std::int64_t> ts = rising(3000);
  ASSERT_EQ(write_stamped(dir_, ts, 64 << 20).size(), 1u);
  // A crash cut the log inside record 2000 after its time index went further.
  const std::string log = segment_path(dir_, 0, "log"), tix = segment_path(dir_, 0, "timeindex");
  std::vector<std::uint64_t> starts;
  ASSERT_TRUE(scan_segment(log, [&](const FrameView& v) { starts.push_back(v.position); }));
  ASSERT_EQ(::truncate(log.c_str(), static_cast<off_t>(starts[2000] + 30)), 0);
  const std::size_t longer = raw_time_index(tix).size();
  std::vector<std::string> reports;
  {
    LogWriter w = writer(dir_, 64 << 20, &reports);
    EXPECT_EQ(w.next_offset(), 2000u);
    auto scan = scan_segment(log);
    ASSERT_TRUE(scan);
    const auto rebuilt = raw_time_index(tix);
    EXPECT_LT(rebuilt.size(), longer);
    ASSERT_EQ(rebuilt.size(), scan->time_index.size());
    for (std::size_t i = 0; i < rebuilt.size(); ++i) {
      EXPECT_EQ(rebuilt[i].relative_offset, scan->time_index[i].relative_offset) << i;
      EXPECT_EQ(rebuilt[i].max_before, scan->time_index[i].max_before) << i;
    }
    // The spiller writes again from offset 2000, its stamps going back to before the crash:
    // the largest timestamp so far carries on from the records before it.
    ts.resize(2000);
    std::vector<std::int64_t> again(1000);
    for (std::size_t i = 0; i < again.size(); ++i) again[i] = 1'500'000 + static_cast<std::int64_t>(i) * 1000;
    ts.insert(ts.end(), again.begin(), again.end());
    ASSERT_TRUE(w.append(stamped_frames(again, 2000)));
  }
  EXPECT_EQ(reports.size(), 1u);
  for (std::int64_t t : {ts[1999], ts[1999] + 1, ts[2000], ts[2500], ts[2999], ts[2999] + 1, std::int64_t{1'600'000}})
    expect_lookup(dir_, ts, t, 1 + kOneInterval);
  struct stat ti{};
  ASSERT_EQ(::stat(tix.c_str(), &ti), 0);
  EXPECT_EQ(ti.st_mode & 0777, 0600u);
}

}  // namespace
