import Collectives
import XCTest
@testable import Cluster

/// The one-line diagnosis from hand-made flight records of several shapes.
final class FlightAnalysisTests: XCTestCase {
    /// A record of `rank` whose groups stand at `groups` (slot, members, last started, last completed) and whose
    /// entries are `entries` (slot, sequence, kind, state).
    private func record(_ rank: Int, world: Int, groups: [(Int, [Int], UInt64, UInt64)],
                        entries: [(Int, UInt64, String, FlightRecord.Entry.State)]) -> FlightRecord {
        let members = Dictionary(uniqueKeysWithValues: groups.map { ($0.0, $0.1) })
        return FlightRecord(
            rank: rank, worldSize: world, jobID: "test", capacity: 100, time: Date().timeIntervalSince1970,
            groups: groups.map { FlightRecord.Group(slot: $0.0, members: $0.1, lastEnqueued: max($0.2, $0.3), lastStarted: $0.2, lastCompleted: $0.3) },
            entries: entries.map { slot, sequence, kind, state in
                FlightRecord.Entry(rank: rank, groupSlot: slot, groupMembers: members[slot]!, sequence: sequence, kind: kind,
                                   inputBytes: 16, outputBytes: 16, state: state, scheduledAt: 900,
                                   startedAt: state == .scheduled ? nil : 901, endedAt: state == .completed ? 902 : nil)
            })
    }

    private let world4 = [0, 1, 2, 3]

    /// Ranks 0-2 wait in all_reduce #57; rank 3 wrote nothing. Written to a run folder and read back from it.
    func testRankWithoutRecordIsBehind() throws {
        let folder = NSTemporaryDirectory() + "flight-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let since = Date()
        XCTAssertNil(FlightAnalysis.diagnose(folder: folder, worldSize: 4, since: since), "no records: nothing to say")
        for rank in 0..<3 {
            try FlightAnalysis.write(record(rank, world: 4, groups: [(0, world4, 57, 56)],
                                            entries: [(0, 56, "all_gather", .completed), (0, 57, "all_reduce", .started)]),
                                     folder: folder)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/flight/rank-2.json"))
        XCTAssertEqual(FlightAnalysis.diagnose(folder: folder, worldSize: 4, since: since),
                       "flight recorder: rank 3 is behind in group 0 [0, 1, 2, 3]: ranks 0, 1, 2 wait in all_reduce #57, "
                       + "rank 3 wrote no record (stopped, hung or killed)")
        XCTAssertNil(FlightAnalysis.diagnose(folder: folder, worldSize: 4, since: Date().addingTimeInterval(5)),
                     "records older than `since` are from an earlier attempt")
    }

    /// Rank 1 completed all_gather #57 and stopped outside collectives; ranks 0 and 2 wait in #58.
    func testRankBehindByOne() {
        let world3 = [0, 1, 2]
        let ahead = [(0, UInt64(57), "all_gather", FlightRecord.Entry.State.completed), (0, 58, "all_reduce", .started)]
        let records = [
            record(0, world: 3, groups: [(0, world3, 58, 57)], entries: ahead),
            record(1, world: 3, groups: [(0, world3, 57, 57)], entries: [(0, 57, "all_gather", .completed)]),
            record(2, world: 3, groups: [(0, world3, 58, 57)], entries: ahead),
        ]
        XCTAssertEqual(FlightAnalysis.diagnose(records),
                       "flight recorder: rank 1 is behind in group 0 [0, 1, 2]: ranks 0, 2 wait in all_reduce #58, "
                       + "rank 1 last completed all_gather #57")

        // A straggler: rank 1 submitted #58 but its worker has not started it.
        var straggler = records
        straggler[1] = record(1, world: 3, groups: [(0, world3, 57, 57)],
                              entries: [(0, 57, "all_gather", .completed), (0, 58, "all_reduce", .scheduled)])
        XCTAssertEqual(FlightAnalysis.diagnose(straggler),
                       "flight recorder: rank 1 is behind in group 0 [0, 1, 2]: ranks 0, 2 wait in all_reduce #58, "
                       + "rank 1 has not started all_reduce #58")
    }

    /// Two groups: ranks 0 and 1 wait in the world's all_gather #10, which rank 2 has not reached because it waits in
    /// all_to_all #5 of group 1 [2, 3], where rank 3 (computing) has not arrived. Rank 3 is the one behind.
    func testTheLaggardWaitingNowhereIsNamedAcrossGroups() {
        let records = [
            record(0, world: 4, groups: [(0, world4, 10, 9), (1, [0, 1], 5, 5)],
                   entries: [(1, 5, "all_to_all", .completed), (0, 10, "all_gather", .started)]),
            record(1, world: 4, groups: [(0, world4, 10, 9), (1, [0, 1], 5, 5)],
                   entries: [(1, 5, "all_to_all", .completed), (0, 10, "all_gather", .started)]),
            record(2, world: 4, groups: [(0, world4, 9, 9), (1, [2, 3], 5, 4)],
                   entries: [(0, 9, "all_gather", .completed), (1, 4, "all_to_all", .completed), (1, 5, "all_to_all", .started)]),
            record(3, world: 4, groups: [(0, world4, 9, 9), (1, [2, 3], 4, 4)],
                   entries: [(0, 9, "all_gather", .completed), (1, 4, "all_to_all", .completed)]),
        ]
        XCTAssertEqual(FlightAnalysis.diagnose(records),
                       "flight recorder: rank 3 is behind in group 1 [2, 3]: rank 2 waits in all_to_all #5, "
                       + "rank 3 last completed all_to_all #4")
    }

    /// Every collective completed (the failure was elsewhere), or every member waits in the same one: nobody is behind.
    func testNothingPendingOrNobodyBehindSaysNothing() {
        let done = (0..<4).map { record($0, world: 4, groups: [(0, world4, 7, 7)], entries: [(0, 7, "barrier", .completed)]) }
        XCTAssertNil(FlightAnalysis.diagnose(done))
        let together = (0..<4).map { record($0, world: 4, groups: [(0, world4, 8, 7)], entries: [(0, 8, "barrier", .failed)]) }
        XCTAssertNil(FlightAnalysis.diagnose(together))
    }
}
