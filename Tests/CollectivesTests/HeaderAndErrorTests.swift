import XCTest
@testable import Collectives

/// Frame validation: a frame from another job, a different collective or a disagreeing size is a typed
/// error naming the peer and the collective; a rank that never shows up times out naming it.
final class HeaderAndErrorTests: XCTestCase {
    func testHeaderRoundTripAndRejects() throws {
        let h = FrameHeader(kindRaw: CollectiveKind.allToAll.rawValue, jobHash: 0xDEAD_BEEF_0123, groupSlot: 3, groupHash: 77,
                            sequence: 123_456_789, sourceRank: 5, messageIndex: 9, payloadBytes: 1 << 33)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)
        defer { buf.deallocate() }
        h.encode(into: buf)
        XCTAssertEqual(try FrameHeader.decode(buf, count: FrameHeader.size), h)
        XCTAssertThrowsError(try FrameHeader.decode(buf, count: FrameHeader.size - 1)) {
            XCTAssertEqual($0 as? FrameHeader.DecodeError, .wrongSize(FrameHeader.size - 1))
        }
        buf.storeBytes(of: UInt32(0x1234_5678), toByteOffset: 0, as: UInt32.self)
        XCTAssertThrowsError(try FrameHeader.decode(buf, count: FrameHeader.size)) {
            XCTAssertEqual($0 as? FrameHeader.DecodeError, .badMagic(0x1234_5678))
        }
        h.encode(into: buf)
        buf.storeBytes(of: UInt16(99).littleEndian, toByteOffset: 4, as: UInt16.self)
        XCTAssertThrowsError(try FrameHeader.decode(buf, count: FrameHeader.size)) {
            XCTAssertEqual($0 as? FrameHeader.DecodeError, .badVersion(99))
        }
    }

    /// Runs two ranks as threads; returns each rank's error description (nil = success).
    private func twoRanks(timeout: Double = 20, _ body: @escaping @Sendable (Communicator) throws -> Void) -> [String?] {
        InProcessCluster.run(worldSize: 2, timeoutSeconds: timeout, body).map { $0.map { "\($0)" } }
    }

    func testDifferentCollectivesAreDetected() {
        let errors = twoRanks { comm in
            if comm.rank == 0 { _ = try comm.world.allGather([Float(1), 2]) }
            else { _ = try comm.world.allReduce([Float(1), 2, 3, 4]) }
        }
        let all = errors.compactMap { $0 }.joined(separator: "\n")
        XCTAssertTrue(all.contains("called all_reduce where this rank called all_gather") ||
                      all.contains("called all_gather where this rank called all_reduce"), all)
    }

    func testDisagreeingSizesAreDetected() {
        let errors = twoRanks { comm in
            _ = try comm.world.allGather([Float](repeating: 1, count: comm.rank == 0 ? 3 : 5))
        }
        let all = errors.compactMap { $0 }.joined(separator: "\n")
        XCTAssertTrue(all.contains("the ranks disagree on sizes"), all)
        XCTAssertTrue(all.contains("all_gather #1"), all)
    }

    func testFrameFromAnotherJobIsRejected() throws {
        // Rank 0 of job "b" sends into the sockets of job "a"'s rank 1 (same inproc endpoints).
        let context = ZMQContext()
        let receiver = try ZMQChannel(spec: ClusterSpec(jobID: "shared", worldSize: 2, transport: .inproc, timeoutSeconds: 5),
                                        context: context, members: [0, 1], me: 1, slot: 0)
        // Job "intruder" connecting to job "shared"'s endpoints.
        let sender = try ZMQChannel(spec: ClusterSpec(jobID: "intruder", worldSize: 2, transport: .inproc, timeoutSeconds: 5),
                                      context: context, members: [0, 1], me: 0, slot: 0, endpointJobID: "shared")
        sender.begin(.allReduce, sequence: 1, timeoutSeconds: 5)
        var payload: [Float] = [1, 2, 3]
        try payload.withUnsafeMutableBytes { try sender.send(to: 1, bytes: $0.baseAddress!, count: $0.count) }
        receiver.begin(.allReduce, sequence: 1, timeoutSeconds: 5)
        XCTAssertThrowsError(try receiver.receive(from: 0, expectedBytes: 12)) { error in
            XCTAssertTrue("\(error)".contains("belongs to another job"), "\(error)")
            XCTAssertTrue("\(error)".contains("rank 1, all_reduce #1"), "\(error)")
        }
        receiver.close()
        try sender.waitForSends()
        sender.close()
    }

    /// Rank 1 is alive (its sockets open, so rank 0's send is queued) but never joins the barrier.
    /// (Had it exited, rank 0's send would fail first, naming it as well: "could not deliver to rank 1".)
    /// A rank stuck outside the collectives (here: a loop that ignores the sockets) does not keep the in-process job
    /// forever: once another rank failed it gets a grace period, then it is named and abandoned.
    func testRankStuckOutsideTheCollectivesIsAbandonedAfterTheTimeout() {
        let release = Flag()
        defer { release.set() }
        let start = Date()
        let errors = InProcessCluster.run(worldSize: 2, timeoutSeconds: 1, abandonAfterSeconds: 1) { comm in
            if comm.rank == 1 { throw CollectiveError.groupClosed("rank 1 fails") }
            while !release.isSet { usleep(10_000) }
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        XCTAssertTrue("\(errors[0].map { "\($0)" } ?? "")".contains("rank 0 did not end within 1.0 s"), "\(errors)")
        XCTAssertTrue("\(errors[1].map { "\($0)" } ?? "")".contains("rank 1 fails"), "\(errors)")
    }

    func testMissingRankTimesOutNamingIt() {
        let start = Date()
        let errors = twoRanks(timeout: 1) { comm in
            if comm.rank == 0 { try comm.world.barrier() } else { Thread.sleep(forTimeInterval: 3) }
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        let e = errors[0] ?? ""
        XCTAssertTrue(e.contains("timed out after 1.0s waiting for rank(s) [1]"), e)
        XCTAssertTrue(e.contains("barrier #1 in group 0"), e)
        XCTAssertNil(errors[1])
    }

    /// Rank 0 queues a collective on group A that can only finish after its collective on group B did
    /// (through a chain of waits on ranks 1-3): with groups served one after another, this deadlocks.
    func testAsyncCollectivesOnTwoGroupsProgressIndependently() {
        let errors = InProcessCluster.run(worldSize: 4, timeoutSeconds: 5) { comm in
            let a = try comm.splitGroups([[0, 1], [2, 3]])
            let b = try comm.splitGroups([[0, 2], [1, 3]])
            var x = [Float](repeating: Float(comm.rank + 1), count: 100_000)
            var y = [Float](repeating: Float(10 * (comm.rank + 1)), count: 1000)
            try x.withUnsafeMutableBufferPointer { px in
                try y.withUnsafeMutableBufferPointer { py in
                    switch comm.rank {
                    case 0:  // A first (needs rank 1, which comes last in the chain), then B
                        let wa = try a.allReduceAsync(px)
                        let wb = try b.allReduceAsync(py)
                        try wb.wait()
                        try wa.wait()
                    case 2:  // B with rank 0, then A with rank 3
                        try b.allReduce(py); try a.allReduce(px)
                    case 3:  // A with rank 2, then B with rank 1
                        try a.allReduce(px); try b.allReduce(py)
                    default:  // rank 1: B with rank 3, then A with rank 0
                        try b.allReduce(py); try a.allReduce(px)
                    }
                }
            }
            let sumA = Float(a.members.map { $0 + 1 }.reduce(0, +))
            let sumB = Float(b.members.map { 10 * ($0 + 1) }.reduce(0, +))
            XCTAssertTrue(x.allSatisfy { $0 == sumA }, "rank \(comm.rank) group A")
            XCTAssertTrue(y.allSatisfy { $0 == sumB }, "rank \(comm.rank) group B")
        }
        XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
    }
}

private final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
