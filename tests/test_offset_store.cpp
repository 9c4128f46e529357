// Committed offsets on disk: survive reopen, a torn tail or a corrupt line is skipped.
#include <gtest/gtest.h>

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
    s->put({"g", "t", 0}, 5);
    s->put({"g", "t", 0}, 9);
    s->put({"g", "t", 1}, 3);
    ASSERT_TRUE(s->flush());
  }
  auto s = OffsetStore::open(d.path);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->get({"g", "t", 0}), 9u);
  EXPECT_EQ(s->get({"g", "t", 1}), 3u);
  EXPECT_FALSE(s->get({"g", "t", 2}));
  EXPECT_EQ(s->skipped_lines(), 0u);
}

TEST(OffsetStore, TornTailAndCorruptLinesAreSkipped) {
  TempDir d;
  {
    auto s = OffsetStore::open(d.path);
    s->put({"g", "t", 0}, 7);
    ASSERT_TRUE(s->flush());
  }
  {
    std::ofstream f(d.path + "/offsets.log", std::ios::app);
    f << "deadbeef g t 0 1000\n";  // bad CRC
    f << "0badf00d g t 0 99";      // torn: no newline
  }
  auto s = OffsetStore::open(d.path);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->get({"g", "t", 0}), 7u) << "neither the corrupt line nor the torn one counts";
  EXPECT_EQ(s->skipped_lines(), 2u);
  // The log was rewritten clean.
  auto again = OffsetStore::open(d.path);
  EXPECT_EQ(again->skipped_lines(), 0u);
  EXPECT_EQ(again->get({"g", "t", 0}), 7u);
}

TEST(OffsetStore, CompactsWhenItGrows) {
  TempDir d;
  auto s = OffsetStore::open(d.path);
  for (std::uint64_t i = 0; i < 5000; ++i) {
    s->put({"g", "t", 0}, i);
    if (i % 100 == 0) {
      ASSERT_TRUE(s->flush());
    }
  }
  ASSERT_TRUE(s->flush());
  EXPECT_LT(std::filesystem::file_size(d.path + "/offsets.log"), 100'000u);
  auto again = OffsetStore::open(d.path);
  EXPECT_EQ(again->get({"g", "t", 0}), 4999u);
}
