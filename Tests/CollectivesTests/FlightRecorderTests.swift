import XCTest
@testable import Collectives

/// The flight recorder, the run-time collective timeout and the straggler delay, on thread ranks over inproc.
final class FlightRecorderTests: XCTestCase {
    /// A ring of 4 keeps the last 4 of 10 collectives, oldest first, completed, with their bytes and times; the group
    /// counters cover all 10 and every group.
    func testRingKeepsTheLastCollectivesAndEveryGroupsPosition() throws {
        let records = Box<FlightRecord>()
        let errors = InProcessCluster.run(worldSize: 2, jobID: "flight-ring", timeoutSeconds: 20, traceBufferSize: 4) { comm in
            let pair = try XCTUnwrap(comm.newGroup(ranks: [0, 1]))
            for i in 0..<8 { _ = try comm.world.allReduce([Float](repeating: Float(i), count: 3)) }
            _ = try comm.world.allGather([Int32(comm.rank)])
            try comm.world.barrier()
            try pair.barrier()
            records.set(comm.rank, comm.flightRecord)
        }
        XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
        let r = try XCTUnwrap(records.get(1))
        XCTAssertEqual([r.rank, r.worldSize, r.capacity], [1, 2, 4])
        XCTAssertEqual(r.jobID, "flight-ring")
        XCTAssertEqual(r.entries.map(\.groupSlot), [0, 0, 0, 1])
        XCTAssertEqual(r.entries.map(\.sequence), [8, 9, 10, 1])
        XCTAssertEqual(r.entries.map(\.kind), ["all_reduce", "all_gather", "barrier", "barrier"])
        XCTAssertEqual(r.entries.map(\.inputBytes), [12, 4, 0, 0])
        XCTAssertEqual(r.entries.map(\.outputBytes), [12, 8, 0, 0])
        for e in r.entries {
            XCTAssertEqual(e.state, .completed)
            XCTAssertEqual(e.rank, 1)
            XCTAssertEqual(e.groupMembers, [0, 1])
            XCTAssertNil(e.error)
            let started = try XCTUnwrap(e.startedAt), ended = try XCTUnwrap(e.endedAt)
            XCTAssertTrue(e.scheduledAt <= started && started <= ended && ended <= r.time, "\(e)")
            XCTAssertLessThan(abs(e.scheduledAt - Date().timeIntervalSince1970), 60, "wall-clock seconds since 1970")
        }
        XCTAssertEqual(r.groups, [FlightRecord.Group(slot: 0, members: [0, 1], lastEnqueued: 10, lastStarted: 10, lastCompleted: 10),
                                  FlightRecord.Group(slot: 1, members: [0, 1], lastEnqueued: 1, lastStarted: 1, lastCompleted: 1)])
        XCTAssertEqual(try JSONDecoder().decode(FlightRecord.self, from: JSONEncoder().encode(r)), r)
    }

    /// Rank 1 never joins: rank 0's first collective is started (its worker waits in it), the one queued behind it
    /// scheduled; then the first fails on its timeout and the second, never started, with the broken group.
    func testPendingAndFailedStates() throws {
        let records = Box<[FlightRecord]>()
        let errors = InProcessCluster.run(worldSize: 2, timeoutSeconds: 1) { comm in
            guard comm.rank == 0 else { Thread.sleep(forTimeInterval: 2); return }
            var buffer: [Float] = [1, 2]
            try buffer.withUnsafeMutableBufferPointer { b in
                let first = try comm.world.allReduceAsync(b)
                let second = comm.world.barrierAsync()
                Thread.sleep(forTimeInterval: 0.3)
                let pending = comm.flightRecord
                XCTAssertThrowsError(try first.wait())
                XCTAssertThrowsError(try second.wait())
                records.set(0, [pending, comm.flightRecord])
            }
        }
        XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
        let (pending, failed) = try XCTUnwrap(records.get(0).map { ($0[0], $0[1]) })
        XCTAssertEqual(pending.entries.map(\.state), [.started, .scheduled])
        XCTAssertNotNil(pending.entries[0].startedAt)
        XCTAssertNil(pending.entries[1].startedAt)
        XCTAssertEqual(pending.groups[0], FlightRecord.Group(slot: 0, members: [0, 1], lastEnqueued: 2, lastStarted: 1, lastCompleted: 0))

        XCTAssertEqual(failed.entries.map(\.state), [.failed, .failed])
        XCTAssertTrue(failed.entries[0].error?.contains("all_reduce #1 in group 0 [0, 1]: timed out after 1.0s") ?? false,
                      "\(failed.entries[0])")
        XCTAssertNil(failed.entries[1].startedAt, "the broken group fails the barrier without starting it")
        XCTAssertNotNil(failed.entries[1].endedAt)
        XCTAssertNotNil(failed.entries[1].error)
        XCTAssertEqual(failed.groups[0], FlightRecord.Group(slot: 0, members: [0, 1], lastEnqueued: 2, lastStarted: 1, lastCompleted: 0))
    }

    func testTraceBufferSizeZeroRecordsNothing() throws {
        let errors = InProcessCluster.run(worldSize: 2, traceBufferSize: 0) { comm in
            XCTAssertEqual(try comm.world.allReduce([Int32(comm.rank)]), [1])
            XCTAssertEqual(comm.traceBufferSize, 0)
            XCTAssertEqual(comm.flightRecord.entries, [])
        }
        XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
    }

    /// The communicator starts with 20 s; after setTimeout(0.5) a peer that never answers fails the collectives of the
    /// existing world group and of a group made afterwards within about 0.5 s each, and the errors say so.
    func testNewTimeoutAppliesToExistingAndLaterGroups() throws {
        let results = Box<(String, String, Double)>()
        let errors = InProcessCluster.run(worldSize: 2, timeoutSeconds: 20) { comm in
            XCTAssertEqual(comm.timeoutSeconds, 20)
            XCTAssertThrowsError(try comm.setTimeout(seconds: 0))
            XCTAssertThrowsError(try comm.setTimeout(seconds: .nan))
            try comm.setTimeout(seconds: 0.5)
            let later = try XCTUnwrap(comm.newGroup(ranks: [0, 1]))
            XCTAssertEqual(comm.world.timeoutSeconds, 0.5)
            XCTAssertEqual(later.timeoutSeconds, 0.5)
            guard comm.rank == 0 else { Thread.sleep(forTimeInterval: 1.5); return }
            let start = Date()
            var messages: [String] = []
            for group in [comm.world!, later] {
                do { try group.barrier() } catch { messages.append("\(error)") }
            }
            results.set(0, (messages.first ?? "", messages.last ?? "", Date().timeIntervalSince(start)))
        }
        XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
        let (world, later, seconds) = try XCTUnwrap(results.get(0))
        XCTAssertTrue(world.contains("barrier #1 in group 0 [0, 1]: timed out after 0.5s waiting for rank(s) [1]"), world)
        XCTAssertTrue(later.contains("barrier #1 in group 1 [0, 1]: timed out after 0.5s waiting for rank(s) [1]"), later)
        XCTAssertLessThan(seconds, 2.5, "both collectives should time out after 0.5 s, not the initial 20 s")
    }

    /// Rank 1 waits 0.3 s before each of its collectives: each takes at least that on rank 1 (and its record shows the
    /// wait between scheduled and started); every rank gets the same sums as without the delay.
    func testStragglerDelayPostponesEveryCollectiveOfItsRank() throws {
        let delay = 0.3
        let errors = InProcessCluster.run(worldSize: 3, timeoutSeconds: 20) { comm in
            XCTAssertThrowsError(try comm.setStragglerDelay(seconds: -1))
            if comm.rank == 1 { try comm.setStragglerDelay(seconds: delay) }
            for i in 1...3 {
                let start = Date()
                let sum = try comm.world.allReduce([Float(comm.rank + i), Float(i)])
                XCTAssertEqual(sum, [Float(3 + 3 * i), Float(3 * i)], "rank \(comm.rank)")
                if comm.rank == 1 { XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), delay) }
            }
            if comm.rank == 1 {
                XCTAssertEqual(comm.stragglerDelaySeconds, delay)
                for e in comm.flightRecord.entries {
                    XCTAssertGreaterThanOrEqual(try XCTUnwrap(e.startedAt) - e.scheduledAt, delay * 0.99, "\(e)")
                }
            }
        }
        XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
    }
}

/// Per-rank results written by thread ranks.
private final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int: T] = [:]
    func set(_ rank: Int, _ v: T) { lock.lock(); values[rank] = v; lock.unlock() }
    func get(_ rank: Int) -> T? { lock.lock(); defer { lock.unlock() }; return values[rank] }
}
