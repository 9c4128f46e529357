// Committed offsets on disk: survive reopen, a torn tail or a corrupt line is skipped.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tools/busd/offset_store.h"
#include "test_util.h"

using namespace shmbus;

namespace {

struct TempDir {
  std::string path = "/tmp/" + test::unique_bus("offsets");
  ~TempDir() { std::filesystem::remove_all(path); }
};

}  // namespace

TEST(OffsetStore, SurvivesReopenAndKeepsTheLastValue) {
  TempDir d;
  {
    auto s = OffsetStore::open(d.path);
    ASSERT_TRUE(s);
    s->put({"g", "t", 0}, 5, 7);
    s->put({"g", "t", 0}, 9, 7);
    s->put({"g", "t", 1}, 3, 7);
    ASSERT_TRUE(s->flush());
  }
  auto s = OffsetStore::open(d.path);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->get({"g", "t", 0}, 7), 9u);
  EXPECT_EQ(s->get({"g", "t", 1}, 7), 3u);
  EXPECT_FALSE(s->get({"g", "t", 2}, 7));
  EXPECT_EQ(s->skipped_lines(), 0u);
}

TEST(OffsetStore, TornTailAndCorruptLinesAreSkipped) {
  TempDir d;
  {
    auto s = OffsetStore::open(d.path);
    s->put({"g", "t", 0}, 7, 7);
    ASSERT_TRUE(s->flush());
  }
  {
    std::ofstream f(d.path + "/offsets.log", std::ios::app);
    f << "deadbeef g t 0 1000\n";  // bad CRC
    f << "0badf00d g t 0 99";      // torn: no newline
  }
  auto s = OffsetStore::open(d.path);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->get({"g", "t", 0}, 7), 7u) << "neither the corrupt line nor the torn one counts";
  EXPECT_EQ(s->skipped_lines(), 2u);
  // The log was rewritten clean.
  auto again = OffsetStore::open(d.path);
  EXPECT_EQ(again->skipped_lines(), 0u);
  EXPECT_EQ(again->get({"g", "t", 0}, 7), 7u);
}

TEST(OffsetStore, CompactsWhenItGrows) {
  TempDir d;
  auto s = OffsetStore::open(d.path);
  for (std::uint64_t i = 0; i < 5000; ++i) {
    s->put({"g", "t", 0}, i, 7);
    if (i % 100 == 0) {
      ASSERT_TRUE(s->flush());
    }
  }
  ASSERT_TRUE(s->flush());
  EXPECT_LT(std::filesystem::file_size(d.path + "/offsets.log"), 100'000u);
  auto again = OffsetStore::open(d.path);
  EXPECT_EQ(again->get({"g", "t", 0}, 7), 4999u);
}

// Issue 14, finding 2: an offset belongs to one creation of its topic (its epoch).
TEST(OffsetStore, Finding2AnOffsetOfAnotherCreationOfTheTopicIsNone) {
  TempDir d;
  {
    auto s = OffsetStore::open(d.path);
    ASSERT_TRUE(s);
    s->put({"g", "t", 0}, 5, 0xaa);
    s->put({"g", "u", 0}, 9, 0xbb);
    ASSERT_TRUE(s->flush());
  }
  {
    std::ofstream f(d.path + "/offsets.log", std::ios::app);
    // A line of the format without the epoch, CRC of "g old 0 4".
    f << "05fab8f0 g old 0 4\n";
  }
  auto s = OffsetStore::open(d.path);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->get({"g", "t", 0}, 0xaa), 5u) << "the epoch survives a reopen";
  EXPECT_FALSE(s->get({"g", "t", 0}, 0xcc)) << "t was deleted and created again";
  EXPECT_EQ(s->drop_topic("t", 0xcc), 1u);
  EXPECT_EQ(s->drop_topic("u", 0xbb), 0u) << "u is the same creation";
  EXPECT_EQ(s->drop_topic("u", 0), 1u) << "u was deleted";
  auto again = OffsetStore::open(d.path);
  EXPECT_FALSE(again->get({"g", "t", 0}, 0xaa)) << "dropped from the log too";
  EXPECT_FALSE(again->get({"g", "u", 0}, 0xbb));
  EXPECT_EQ(again->skipped_lines(), 0u);
  EXPECT_EQ(again->get({"g", "old", 0}, 0x1234), 4u) << "an old line's epoch is unknown: kept";
}

// A write of offsets.log cut short (here: the file size limit, as a full disk would) and
// then retried writes only what is missing: the piece already written and the rest join
// into whole lines. (The retry wrote everything again, so the torn piece merged with the
// first line rewritten and that line's CRC failed: an offset acknowledged after the retry
// was lost on reopen.)
TEST(OffsetStore, AShortWriteRetriedLosesNoOffset) {
  TempDir d;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // the child: its own file size limit
    ::signal(SIGXFSZ, SIG_IGN);
    auto s = OffsetStore::open(d.path);
    if (!s) ::_exit(2);
    s->put({"g", "t", 0}, 11, 7);
    s->put({"g", "t", 1}, 22, 7);
    s->put({"g", "t", 2}, 33, 7);
    rlimit lim{};
    ::getrlimit(RLIMIT_FSIZE, &lim);
    const rlim_t was = lim.rlim_cur;
    lim.rlim_cur = 10;  // within the first line
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) ::_exit(3);
    if (s->flush()) ::_exit(4);  // cut short: an error
    lim.rlim_cur = was;
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) ::_exit(3);
    if (!s->flush()) ::_exit(5);  // the retry: these three are acknowledged now
    ::_exit(0);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFEXITED(st));
  ASSERT_EQ(WEXITSTATUS(st), 0);
  auto s = OffsetStore::open(d.path);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->get({"g", "t", 0}, 7), 11u);
  EXPECT_EQ(s->get({"g", "t", 1}, 7), 22u);
  EXPECT_EQ(s->get({"g", "t", 2}, 7), 33u);
  EXPECT_EQ(s->skipped_lines(), 0u);
}
