// Buffer-level checks of the io_uring channel: CPU lists, payload sizing, request
// reassembly from a ring entry and reply encoding into it. No rings, no root.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/system.h"
#include "fuse/uring_channel.h"

namespace fuse {
namespace {

namespace k = kernel;

TEST(UringCpuList, ParsesRangesAndSingles) {
  auto c = efuse::parse_cpu_list("0-3,8,10-11\n");
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, (std::vector<unsigned>{0, 1, 2, 3, 8, 10, 11}));
  c = efuse::parse_cpu_list("0");
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, (std::vector<unsigned>{0}));
  c = efuse::parse_cpu_list("3,1-2,1");  // unordered and repeated
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, (std::vector<unsigned>{1, 2, 3}));
}

TEST(UringCpuList, RejectsMalformed) {
  for (const char* bad : {"a", "1-", "-1", "3-1", "1,,2", "0,", "1-2-3", "0x1"})
    EXPECT_FALSE(efuse::parse_cpu_list(bad)) << bad;
  auto empty = efuse::parse_cpu_list("\n");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

TEST(UringPayload, IsTheLargestOfMinBufferMaxWriteAndMaxPages) {
  EXPECT_EQ(uring::payload_size(4096, 1, 4096), 8192u);        // FUSE_MIN_READ_BUFFER
  EXPECT_EQ(uring::payload_size(1u << 20, 256, 4096), 1u << 20);
  EXPECT_EQ(uring::payload_size(128 * 1024, 256, 4096), 1u << 20);  // max_pages wins
  EXPECT_EQ(uring::payload_size(1u << 20, 32, 4096), 1u << 20);
}

class UringEntry : public ::testing::Test {
 protected:
  void SetUp() override {
    int err = 0;
    buf_ = uring::EntryBuffer::create(64 * 1024, &err);
    ASSERT_TRUE(buf_) << strerror(err);
  }

  // Fills the entry as the kernel does: in_header in in_out, the op's first argument in
  // op_in, the rest in the payload.
  void kernel_writes(uint32_t opcode, uint64_t unique, const void* op, size_t op_len,
                     const std::string& payload, size_t len_adjust = 0) {
    auto* h = buf_->header();
    k::fuse_in_header in{};
    in.opcode = opcode;
    in.unique = unique;
    in.nodeid = 1;
    in.len = static_cast<uint32_t>(sizeof in + op_len + payload.size() + len_adjust);
    std::memcpy(h->in_out, &in, sizeof in);
    if (op_len) std::memcpy(h->op_in, op, op_len);
    std::memcpy(buf_->payload(), payload.data(), payload.size());
    h->ring_ent_in_out.payload_sz = static_cast<uint32_t>(payload.size());
    h->ring_ent_in_out.commit_id = unique;
  }

  std::unique_ptr<uring::EntryBuffer> buf_;
};

TEST_F(UringEntry, RegisterIovsPointAtHeaderAndAlignedPayload) {
  const struct iovec* iov = buf_->register_iov();
  EXPECT_EQ(iov[0].iov_base, buf_->header());
  EXPECT_EQ(iov[0].iov_len, sizeof(k::fuse_uring_req_header));
  EXPECT_EQ(iov[1].iov_base, buf_->payload());
  EXPECT_GE(iov[1].iov_len, 64u * 1024);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf_->payload()) % 4096, 0u);  // O_DIRECT-friendly
}

TEST_F(UringEntry, WriteIsReassembledWithoutMovingItsData) {
  k::fuse_write_in w{};
  w.fh = 7;
  w.offset = 4096;
  w.size = 5;
  kernel_writes(static_cast<uint32_t>(k::Opcode::Write), 42, &w, sizeof w, "hello");
  const char* why = nullptr;
  auto req = buf_->assemble_request(&why);
  ASSERT_FALSE(req.empty()) << why;
  ASSERT_EQ(req.size(), sizeof(k::fuse_in_header) + sizeof w + 5);
  // The write data stays where the kernel put it; header and op arg sit right before it.
  EXPECT_EQ(req.data() + sizeof(k::fuse_in_header) + sizeof w, buf_->payload());
  k::fuse_in_header in;
  std::memcpy(&in, req.data(), sizeof in);
  EXPECT_EQ(in.unique, 42u);
  EXPECT_EQ(in.len, req.size());
  k::fuse_write_in got;
  std::memcpy(&got, req.data() + sizeof in, sizeof got);
  EXPECT_EQ(got.fh, 7u);
  EXPECT_EQ(got.offset, 4096u);
  EXPECT_EQ(std::string(req.data() + sizeof in + sizeof got, 5), "hello");
  EXPECT_EQ(buf_->commit_id(), 42u);
  EXPECT_EQ(buf_->request_payload_size(), 5u);
}

TEST_F(UringEntry, LookupNameComesFromThePayloadWithAnEmptyOpArg) {
  std::string name("file.txt", 9);  // with its NUL
  kernel_writes(static_cast<uint32_t>(k::Opcode::Lookup), 9, nullptr, 0, name);
  const char* why = nullptr;
  auto req = buf_->assemble_request(&why);
  ASSERT_FALSE(req.empty()) << why;
  EXPECT_EQ(req.size(), sizeof(k::fuse_in_header) + name.size());
  EXPECT_EQ(std::string(req.data() + sizeof(k::fuse_in_header)), "file.txt");
}

TEST_F(UringEntry, InconsistentSizesAreRejected) {
  const char* why = nullptr;
  // len shorter than header + payload
  kernel_writes(static_cast<uint32_t>(k::Opcode::Lookup), 1, nullptr, 0, "abc");
  auto* h = buf_->header();
  k::fuse_in_header in;
  std::memcpy(&in, h->in_out, sizeof in);
  in.len = sizeof in + 1;
  std::memcpy(h->in_out, &in, sizeof in);
  EXPECT_TRUE(buf_->assemble_request(&why).empty());
  EXPECT_NE(why, nullptr);
  // len implying an op argument larger than op_in
  kernel_writes(static_cast<uint32_t>(k::Opcode::Lookup), 1, nullptr, 0, "abc", 200);
  why = nullptr;
  EXPECT_TRUE(buf_->assemble_request(&why).empty());
  EXPECT_NE(why, nullptr);
  // payload_sz beyond the buffer
  kernel_writes(static_cast<uint32_t>(k::Opcode::Lookup), 1, nullptr, 0, "abc");
  h->ring_ent_in_out.payload_sz = static_cast<uint32_t>(buf_->payload_capacity() + 1);
  why = nullptr;
  EXPECT_TRUE(buf_->assemble_request(&why).empty());
  EXPECT_NE(why, nullptr);
}

k::fuse_out_header out_header(uint64_t unique, int error, size_t payload) {
  return k::fuse_out_header{static_cast<uint32_t>(sizeof(k::fuse_out_header) + payload), error,
                            unique};
}

TEST_F(UringEntry, ReplyGoesToInOutAndPayload) {
  k::fuse_attr_out attr{};
  attr.attr.ino = 99;
  auto oh = out_header(5, 0, sizeof attr);
  struct iovec iov[2] = {{&oh, sizeof oh}, {&attr, sizeof attr}};
  ASSERT_EQ(buf_->encode_reply(iov, 2), 0);
  auto* h = buf_->header();
  k::fuse_out_header got;
  std::memcpy(&got, h->in_out, sizeof got);
  EXPECT_EQ(got.unique, 5u);
  EXPECT_EQ(got.error, 0);
  EXPECT_EQ(h->ring_ent_in_out.payload_sz, sizeof attr);
  k::fuse_attr_out back;
  std::memcpy(&back, buf_->payload(), sizeof back);
  EXPECT_EQ(back.attr.ino, 99u);
}

TEST_F(UringEntry, ReplyBuiltInThePayloadIsNotCopied) {
  std::memcpy(buf_->payload(), "data read in place", 18);
  auto oh = out_header(6, 0, 18);
  struct iovec iov[2] = {{&oh, sizeof oh}, {buf_->payload(), 18}};
  ASSERT_EQ(buf_->encode_reply(iov, 2), 0);
  EXPECT_EQ(buf_->header()->ring_ent_in_out.payload_sz, 18u);
  EXPECT_EQ(std::string(buf_->payload(), 18), "data read in place");
}

TEST_F(UringEntry, SeveralPiecesSomeInsideThePayloadAreGatheredSafely) {
  // Piece 2 lives at the start of the payload buffer; piece 1 would overwrite it if copied
  // naively in order.
  std::memcpy(buf_->payload(), "tail", 4);
  const char head[] = "HEAD-";
  auto oh = out_header(7, 0, 9);
  struct iovec iov[3] = {{&oh, sizeof oh}, {const_cast<char*>(head), 5}, {buf_->payload(), 4}};
  ASSERT_EQ(buf_->encode_reply(iov, 3), 0);
  EXPECT_EQ(std::string(buf_->payload(), 9), "HEAD-tail");
  EXPECT_EQ(buf_->header()->ring_ent_in_out.payload_sz, 9u);
}

TEST_F(UringEntry, ErrorReplyHasNoPayload) {
  auto oh = out_header(8, -ENOENT, 0);
  struct iovec iov{&oh, sizeof oh};
  ASSERT_EQ(buf_->encode_reply(&iov, 1), 0);
  k::fuse_out_header got;
  std::memcpy(&got, buf_->header()->in_out, sizeof got);
  EXPECT_EQ(got.error, -ENOENT);
  EXPECT_EQ(buf_->header()->ring_ent_in_out.payload_sz, 0u);
}

TEST_F(UringEntry, OversizedReplyBecomesEio) {
  std::vector<char> big(buf_->payload_capacity() + 1, 'x');
  auto oh = out_header(9, 0, big.size());
  struct iovec iov[2] = {{&oh, sizeof oh}, {big.data(), big.size()}};
  EXPECT_EQ(buf_->encode_reply(iov, 2), -EOVERFLOW);
  k::fuse_out_header got;
  std::memcpy(&got, buf_->header()->in_out, sizeof got);
  EXPECT_EQ(got.error, -EIO);
  EXPECT_EQ(got.unique, 9u);
  EXPECT_EQ(buf_->header()->ring_ent_in_out.payload_sz, 0u);
}

TEST(UringKernel, CommandFitsTheSqe128CommandArea) {
  EXPECT_LE(sizeof(k::fuse_uring_cmd_req), k::kSqe128CmdSize);
  EXPECT_EQ(sizeof(k::fuse_uring_req_header), 288u);
  EXPECT_EQ(static_cast<uint32_t>(k::UringCmd::Register), 1u);
  EXPECT_EQ(static_cast<uint32_t>(k::UringCmd::CommitAndFetch), 2u);
}

}  // namespace
}  // namespace fuse
