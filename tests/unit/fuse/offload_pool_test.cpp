// The offload pool (fuse/offload_pool.h): bounded threads and queue, what it refuses, and
// what becomes of tasks at stop(). Real threads, synchronized on the tasks themselves.
#include "fuse/offload_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "../testing/eventually.h"

namespace fuse {
namespace {

using efuse::testing::eventually;

// Tasks that wait until released, so that a test sees them running.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  std::atomic<int> ran{0};
  OffloadPool::Task task() {
    return [this] {
      std::unique_lock lk(mu);
      cv.wait(lk, [this] { return open; });
      ran.fetch_add(1);
    };
  }
  void release() {
    std::lock_guard lk(mu);
    open = true;
    cv.notify_all();
  }
  // Submits `n` of them; true when the pool took all and `running` of them run.
  bool submit(OffloadPool& pool, int n, unsigned running) {
    for (int i = 0; i < n; ++i) {
      OffloadPool::Task t = task();
      if (!pool.submit(t)) return false;
    }
    return eventually([&] { return pool.stats().running == running; });
  }
};

TEST(OffloadPool, RunsEveryTaskAndStopWaitsForThem) {
  OffloadPool pool(2, 100);
  std::atomic<int> ran{0};
  for (int i = 0; i < 50; ++i) {
    OffloadPool::Task t = [&ran] { ran.fetch_add(1); };
    ASSERT_TRUE(pool.submit(t));
  }
  pool.stop();
  EXPECT_EQ(ran.load(), 50);
  OffloadPool::Stats s = pool.stats();
  EXPECT_EQ(s.submitted, 50u);
  EXPECT_EQ(s.rejected, 0u);
  EXPECT_EQ(s.threads, 0u);
  EXPECT_EQ(s.queued, 0u);
}

TEST(OffloadPool, NeverMoreThreadsThanItsLimitAndTheRestQueue) {
  OffloadPool pool(3, 100);
  Gate g;
  ASSERT_TRUE(g.submit(pool, 10, 3));
  OffloadPool::Stats s = pool.stats();
  EXPECT_EQ(s.threads, 3u);
  EXPECT_EQ(s.queued, 7u);
  g.release();
  pool.stop();
  EXPECT_EQ(g.ran.load(), 10);
}

TEST(OffloadPool, AFullQueueRefusesAndTheCallerKeepsTheTask) {
  OffloadPool pool(1, 2);
  Gate g;
  std::vector<OffloadPool::Task> tasks;
  for (int i = 0; i < 4; ++i) tasks.push_back(g.task());
  ASSERT_TRUE(pool.submit(tasks[0]));
  ASSERT_TRUE(eventually([&] { return pool.stats().running == 1; }));  // the one thread
  ASSERT_TRUE(pool.submit(tasks[1]));
  ASSERT_TRUE(pool.submit(tasks[2]));
  EXPECT_FALSE(pool.submit(tasks[3])) << "two wait already";
  EXPECT_TRUE(static_cast<bool>(tasks[3])) << "a refused task stays the caller's";
  EXPECT_EQ(pool.stats().rejected, 1u);
  g.release();
  pool.stop();
  EXPECT_EQ(g.ran.load(), 3);
  EXPECT_FALSE(pool.submit(tasks[3])) << "a stopped pool takes nothing";
  EXPECT_EQ(pool.stats().rejected, 2u);
}

TEST(OffloadPool, NoThreadCanStartSoNothingIsTaken) {
  int attempts = 0;
  OffloadPool pool(4, 100, [&attempts](std::function<void()>) {
    ++attempts;
    throw std::system_error(EAGAIN, std::generic_category(), "pthread_create");
  });
  bool ran = false;
  OffloadPool::Task t = [&ran] { ran = true; };
  EXPECT_FALSE(pool.submit(t));
  EXPECT_TRUE(static_cast<bool>(t));
  EXPECT_EQ(attempts, 1);
  EXPECT_EQ(pool.stats().threads, 0u);
  EXPECT_EQ(pool.stats().rejected, 1u);
  pool.stop();
  EXPECT_FALSE(ran);
}

// A thread that never runs (its start kept the body, then dropped it): the pool stops
// counting it, and stop() destroys the tasks left unrun, which is how their reply tokens
// answer (the session's backstop).
TEST(OffloadPool, TasksNoThreadRanAreDestroyedAtStop) {
  std::vector<std::function<void()>> kept;
  OffloadPool pool(1, 10, [&kept](std::function<void()> body) { kept.push_back(std::move(body)); });
  auto destroyed = std::make_shared<std::atomic<bool>>(false);
  struct Token {
    std::shared_ptr<std::atomic<bool>> flag;
    ~Token() {
      if (flag) flag->store(true);
    }
  };
  bool ran = false;
  {
    auto token = std::make_shared<Token>();
    token->flag = destroyed;
    OffloadPool::Task t = [token, &ran] { ran = true; };
    ASSERT_TRUE(pool.submit(t));
  }
  EXPECT_EQ(pool.stats().threads, 1u);
  EXPECT_FALSE(destroyed->load());
  kept.clear();
  EXPECT_EQ(pool.stats().threads, 0u);
  pool.stop();
  EXPECT_FALSE(ran);
  EXPECT_TRUE(destroyed->load());
}

TEST(OffloadPool, ALoweredLimitLetsThreadsGo) {
  OffloadPool pool(4, 100);
  Gate g;
  ASSERT_TRUE(g.submit(pool, 4, 4));
  pool.set_limits(1, 100);
  g.release();
  ASSERT_TRUE(eventually([&] { return pool.stats().threads == 1; }));
  EXPECT_EQ(pool.stats().max_threads, 1u);
  // The thread that stays may still be finishing its task when the others have left.
  EXPECT_TRUE(eventually([&] { return g.ran.load() == 4; }));
  pool.stop();
}

}  // namespace
}  // namespace fuse
