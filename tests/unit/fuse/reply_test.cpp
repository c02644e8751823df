// send_reply: the header's length counts exactly the pieces handed to the transport.
#include "fuse/reply.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "fuse/kernel.h"

namespace fuse {
namespace {

namespace k = kernel;

// Keeps what one send() carried, iovec by iovec.
class PieceTransport final : public Transport {
 public:
  int send(const struct iovec* iov, int count) override {
    pieces.clear();
    for (int i = 0; i < count; ++i)
      pieces.emplace_back(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    return 0;
  }
  k::fuse_out_header header() const {
    k::fuse_out_header oh{};
    EXPECT_EQ(pieces.at(0).size(), sizeof oh);
    std::memcpy(&oh, pieces.at(0).data(), sizeof oh);
    return oh;
  }
  std::vector<std::string> pieces;
};

std::vector<struct iovec> iovecs(std::vector<std::string>& parts) {
  std::vector<struct iovec> v;
  for (std::string& p : parts) v.push_back({p.data(), p.size()});
  return v;
}

TEST(SendReply, EveryPieceUpToTheLimitIsSentAndCounted) {
  for (int n = 0; n <= kMaxReplyPieces; ++n) {
    SCOPED_TRACE(n);
    std::vector<std::string> parts;
    for (int i = 0; i < n; ++i) parts.push_back(std::string(static_cast<size_t>(i) + 1, 'a' + i));
    auto iov = iovecs(parts);
    PieceTransport t;
    EXPECT_EQ(send_reply(t, 42, 0, iov), 0);
    ASSERT_EQ(t.pieces.size(), static_cast<size_t>(n) + 1) << "one iovec per piece, no more";
    size_t len = sizeof(k::fuse_out_header);
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(t.pieces[static_cast<size_t>(i) + 1], parts[static_cast<size_t>(i)]);
      len += parts[static_cast<size_t>(i)].size();
    }
    EXPECT_EQ(t.header().len, len);
    EXPECT_EQ(t.header().unique, 42u);
    EXPECT_EQ(t.header().error, 0);
  }
}

TEST(SendReply, ErrorsTravelNegated) {
  PieceTransport t;
  EXPECT_EQ(send_reply(t, 7, ENOENT, {}), 0);
  ASSERT_EQ(t.pieces.size(), 1u);
  EXPECT_EQ(t.header().error, -ENOENT);
  EXPECT_EQ(t.header().len, sizeof(k::fuse_out_header));
}

TEST(SendReply, TooManyPiecesIsAnEioReplyNotAGarbledOne) {
  std::vector<std::string> parts(kMaxReplyPieces + 1, "x");
  auto iov = iovecs(parts);
  PieceTransport t;
  EXPECT_EQ(send_reply(t, 9, 0, iov), -E2BIG);
  ASSERT_EQ(t.pieces.size(), 1u);
  EXPECT_EQ(t.header().error, -EIO);
  EXPECT_EQ(t.header().len, sizeof(k::fuse_out_header));
  EXPECT_EQ(t.header().unique, 9u);
}

}  // namespace
}  // namespace fuse
