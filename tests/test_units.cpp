// Pure functions: the partitioner, names, sizes; where a bus's files go.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>

#include "bus/names.h"
#include "bus/partitioner.h"
#include "bus/paths.h"
#include "tools/busctl/units.h"
#include "shmbus/record.h"

using namespace shmbus;

TEST(Murmur2, MatchesKafkaTestVectors) {
  EXPECT_EQ(murmur2(as_bytes("kafka")), 0xd067cf64u);
  EXPECT_EQ(murmur2(as_bytes("")), 0x106e08d9u);
  // From Kafka's UtilsTest: "21" -> -973932308, "foobar" -> -790332482, "a-little-bit-long-string" -> -985981536
  EXPECT_EQ(static_cast<std::int32_t>(murmur2(as_bytes("21"))), -973932308);
  EXPECT_EQ(static_cast<std::int32_t>(murmur2(as_bytes("foobar"))), -790332482);
  EXPECT_EQ(static_cast<std::int32_t>(murmur2(as_bytes("a-little-bit-long-string"))), -985981536);
  EXPECT_EQ(static_cast<std::int32_t>(murmur2(as_bytes("a-little-bit-longer-string"))), -1486304829);
  EXPECT_EQ(static_cast<std::int32_t>(murmur2(as_bytes("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"))), -58897971);
  EXPECT_EQ(static_cast<std::int32_t>(murmur2(as_bytes("abc"))), 479470107);
}

TEST(Murmur2, PartitionIsPositiveModulo) {
  // (murmur2 & 0x7fffffff) % n, as Kafka's DefaultPartitioner / BuiltInPartitioner.
  EXPECT_EQ(partition_for_key(as_bytes("kafka"), 12), (0xd067cf64u & 0x7fffffffu) % 12);
  for (std::uint32_t n = 1; n < 50; ++n) EXPECT_LT(partition_for_key(as_bytes("x"), n), n);
}

TEST(Names, AcceptsKafkaLikeNames) {
  EXPECT_TRUE(validate_name("topic", "orders"));
  EXPECT_TRUE(validate_name("topic", "a.b_c-D9"));
  EXPECT_TRUE(validate_name("topic", std::string(200, 'x')));
}

TEST(Names, RefusesBadNamesWithAClearMessage) {
  auto e = validate_name("topic", "a/b");
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, Errc::kInvalidArgument);
  EXPECT_NE(e.error().message.find("'/'"), std::string::npos);
  EXPECT_FALSE(validate_name("topic", ""));
  EXPECT_FALSE(validate_name("topic", std::string(201, 'x')));
  EXPECT_FALSE(validate_name("topic", "."));
  EXPECT_FALSE(validate_name("topic", ".."));
  EXPECT_FALSE(validate_name("bus", "a~b"));
  EXPECT_FALSE(validate_name("bus", std::string("a\0b", 3)));
  EXPECT_NE(validate_name("topic", std::string(201, 'x')).error().message.find("201"), std::string::npos);
}

TEST(Names, SegmentNamesAreUnambiguousAndFitNameMax) {
  EXPECT_EQ(registry_segment_name("b"), "shmbus.b~registry");
  EXPECT_EQ(partition_segment_name("b", "t.x", 3), "shmbus.b~t.x~3");
  // bus "a.b" + topic "c" and bus "a" + topic "b.c" must not collide.
  EXPECT_NE(partition_segment_name("a.b", "c", 0), partition_segment_name("a", "b.c", 0));
  const std::string longest = partition_segment_name(std::string(200, 'b'), std::string(200, 't'), 1023);
  EXPECT_LE(longest.size(), 255u);
  EXPECT_NE(partition_segment_name(std::string(200, 'b'), std::string(199, 't') + "u", 0),
            partition_segment_name(std::string(200, 'b'), std::string(199, 't') + "v", 0));
}

TEST(Sizes, ParsesBytesAndUnits) {
  EXPECT_EQ(*parse_size("1048576"), 1048576u);
  EXPECT_EQ(*parse_size("64KiB"), 65536u);
  EXPECT_EQ(*parse_size("1MiB"), 1048576u);
  EXPECT_EQ(*parse_size("1m"), 1048576u);
  EXPECT_EQ(*parse_size("2GB"), 2000000000u);
  EXPECT_EQ(*parse_size("10B"), 10u);
}

TEST(Sizes, RefusesBadSizes) {
  EXPECT_FALSE(parse_size("-1"));
  EXPECT_FALSE(parse_size("1.5MiB"));
  EXPECT_FALSE(parse_size("12XB"));
  EXPECT_FALSE(parse_size(""));
  EXPECT_FALSE(parse_size("99999999999999999999"));
  EXPECT_FALSE(parse_size("20000000000GiB"));
  EXPECT_NE(parse_size("12XB").error().message.find("XB"), std::string::npos);
  EXPECT_FALSE(parse_count("--count", "-3"));
  EXPECT_FALSE(parse_count("--count", "3x"));
  EXPECT_EQ(*parse_count("--count", "3"), 3u);
}

TEST(Headers, IteratorStopsOnMalformedBlocks) {
  std::vector<std::byte> raw(8 + 2 + 3);
  std::uint32_t kl = 2, vl = 3;
  std::memcpy(raw.data(), &kl, 4);
  std::memcpy(raw.data() + 4, &vl, 4);
  std::memcpy(raw.data() + 8, "k1v11", 5);
  HeaderIterator it{Bytes(raw)};
  auto h = it.next();
  ASSERT_TRUE(h);
  EXPECT_EQ(h->key, "k1");
  EXPECT_EQ(as_string(h->value), "v11");
  EXPECT_FALSE(it.next());
  vl = 1000;
  std::memcpy(raw.data() + 4, &vl, 4);
  HeaderIterator bad{Bytes(raw)};
  EXPECT_FALSE(bad.next());
}

TEST(Headers, IteratorReadsANullValueAsNullNeverAsALength) {
  // "n" null (value length 0xffffffff, no bytes), then "e" empty (length 0, as before).
  std::vector<std::byte> raw(2 * (8 + 1));
  auto put = [&](std::size_t at, std::uint32_t vl, char key) {
    const std::uint32_t kl = 1;
    std::memcpy(raw.data() + at, &kl, 4);
    std::memcpy(raw.data() + at + 4, &vl, 4);
    raw[at + 8] = static_cast<std::byte>(key);
  };
  put(0, 0xffff'ffffu, 'n');
  put(9, 0, 'e');
  HeaderIterator it{Bytes(raw)};
  auto n = it.next();
  ASSERT_TRUE(n);
  EXPECT_EQ(n->key, "n");
  EXPECT_TRUE(n->null_value);
  EXPECT_TRUE(n->value.empty());
  auto e = it.next();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->key, "e");
  EXPECT_FALSE(e->null_value);
  EXPECT_TRUE(e->value.empty());
  EXPECT_FALSE(it.next());
  // A null value whose key runs past the block is malformed, as any other.
  HeaderIterator cut{Bytes(raw).first(8)};
  EXPECT_FALSE(cut.next());
}

namespace {

// Sets (or, with nullopt, unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    value ? ::setenv(name, value->c_str(), 1) : ::unsetenv(name);
  }
  ~ScopedEnv() { old_ ? ::setenv(name_, old_->c_str(), 1) : ::unsetenv(name_); }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST(Paths, WithoutAHomeNonRootStateGoesToAPrivateVarTmpDirectory) {
  if (::geteuid() == 0) GTEST_SKIP() << "root keeps state in /var/lib/shmbus";
  ScopedEnv dir("SHMBUS_DIR", std::nullopt), run("XDG_RUNTIME_DIR", std::nullopt), state("XDG_STATE_HOME", std::nullopt);
  const std::string uid = std::to_string(::geteuid());
  for (const char* home : {"", "/nonexistent", "/"}) {
    ScopedEnv h("HOME", *home ? std::optional<std::string>(home) : std::nullopt);
    const BusPaths p = bus_paths("b");
    EXPECT_EQ(p.runtime_dir, "/tmp/shmbus-" + uid + "/b") << "HOME=" << home;
    EXPECT_EQ(p.state_dir, "/var/tmp/shmbus-" + uid + "/b") << "HOME=" << home;
    EXPECT_EQ(p.private_bases, (std::vector<std::string>{"/tmp/shmbus-" + uid, "/var/tmp/shmbus-" + uid}));
  }
}

TEST(Paths, RootUsesRunAndVarLibWithNoPrivateBases) {
  if (::geteuid() != 0) GTEST_SKIP() << "not root";
  ScopedEnv dir("SHMBUS_DIR", std::nullopt), home("HOME", std::nullopt);
  const BusPaths p = bus_paths("b");
  EXPECT_EQ(p.runtime_dir, "/run/shmbus/b");
  EXPECT_EQ(p.state_dir, "/var/lib/shmbus/b");
  EXPECT_TRUE(p.private_bases.empty());
}

// A group-shared bus's base directory: made 02770 in the group, and refused, naming what is
// wrong, when it is a link, open to others, of another group or of a stranger.
TEST(Paths, SharedDirIsTheGroupsAndRefusedWhenLinkedOpenOrAnotherGroups) {
  const std::string base = std::filesystem::temp_directory_path() / ("shmbus-shared-" + std::to_string(::getpid()));
  std::filesystem::remove_all(base);
  const unsigned gid = ::getegid();
  ASSERT_TRUE(shared_dir(base, gid));
  struct stat st {};
  ASSERT_EQ(::lstat(base.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 02770u);
  EXPECT_EQ(st.st_gid, gid);
  EXPECT_TRUE(shared_dir(base, gid)) << "an existing directory of the group is fine";
  EXPECT_FALSE(shared_dir(base + "-absent", gid, /*create=*/false));

  ASSERT_EQ(::chmod(base.c_str(), 02777), 0);
  auto open = shared_dir(base, gid);
  ASSERT_FALSE(open);
  EXPECT_EQ(open.error().code, Errc::kPermission);
  EXPECT_NE(open.error().message.find("its mode is 2777, not 2770"), std::string::npos) << open.error().message;
  ASSERT_EQ(::chmod(base.c_str(), 02770), 0);

  const std::string link = base + "-link";
  ASSERT_EQ(::symlink(base.c_str(), link.c_str()), 0);
  auto linked = shared_dir(link, gid);
  ASSERT_FALSE(linked);
  EXPECT_NE(linked.error().message.find("refusing to use " + link), std::string::npos) << linked.error().message;
  EXPECT_NE(linked.error().message.find("it is a symbolic link"), std::string::npos) << linked.error().message;
  ::unlink(link.c_str());

  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(base.c_str(), 0, 65534), 0);
    auto other = shared_dir(base, gid);
    ASSERT_FALSE(other);
    EXPECT_NE(other.error().message.find("its group is"), std::string::npos) << other.error().message;
    ASSERT_EQ(::chown(base.c_str(), 65534, gid), 0);  // nobody: neither root nor in root's group
    ASSERT_EQ(::chmod(base.c_str(), 02770), 0);
    auto stranger = shared_dir(base, gid);
    ASSERT_FALSE(stranger);
    EXPECT_NE(stranger.error().message.find("it belongs to uid 65534, neither root nor a member"), std::string::npos)
        << stranger.error().message;
  }
  std::filesystem::remove_all(base);
}

TEST(Paths, PrivateDirIsCreated0700AndRefusedWhenLinkedOpenOrSomeoneElses) {
  const std::string base = std::filesystem::temp_directory_path() / ("shmbus-units-" + std::to_string(::getpid()));
  std::filesystem::remove_all(base);
  ASSERT_TRUE(private_dir(base));
  struct stat st {};
  ASSERT_EQ(::lstat(base.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_TRUE(private_dir(base)) << "an existing directory of ours is fine";
  EXPECT_FALSE(private_dir(base + "-absent", /*create=*/false));

  ASSERT_EQ(::chmod(base.c_str(), 0755), 0);
  auto open = private_dir(base);
  ASSERT_FALSE(open);
  EXPECT_NE(open.error().message.find("its mode is 0755, not 0700"), std::string::npos) << open.error().message;
  ASSERT_EQ(::chmod(base.c_str(), 0700), 0);

  const std::string link = base + "-link";
  ASSERT_EQ(::symlink(base.c_str(), link.c_str()), 0);
  auto linked = private_dir(link);
  ASSERT_FALSE(linked);
  EXPECT_EQ(linked.error().code, Errc::kPermission);
  EXPECT_NE(linked.error().message.find("refusing to use " + link + ": it is a symbolic link"), std::string::npos)
      << linked.error().message;
  ::unlink(link.c_str());

  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(base.c_str(), 65534, 65534), 0);
    auto theirs = private_dir(base);
    ASSERT_FALSE(theirs);
    EXPECT_NE(theirs.error().message.find("it belongs to uid 65534, not to us (uid 0)"), std::string::npos)
        << theirs.error().message;
  }
  std::filesystem::remove_all(base);
}
