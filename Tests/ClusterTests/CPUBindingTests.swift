import XCTest
@testable import Cluster

final class CPUBindingTests: XCTestCase {
    func place(_ policy: CPUBindPolicy = .block, ranks: Int, cpus: [Int]) -> [[Int]?] {
        (0..<ranks).map { CPUBinding.assignment(policy, index: $0, count: ranks, cpus: cpus) }
    }

    func testBlockPlacesConsecutiveRanksTogether() {
        // More ranks than CPUs: blocks of consecutive ranks share one CPU.
        XCTAssertEqual(place(ranks: 8, cpus: [0, 1]), [[0], [0], [0], [0], [1], [1], [1], [1]])
        XCTAssertEqual(place(ranks: 3, cpus: [0, 1]), [[0], [0], [1]])
        XCTAssertEqual(place(ranks: 4, cpus: [2, 5, 7]), [[2], [2], [5], [7]])
        XCTAssertEqual(place(ranks: 2, cpus: [0, 1]), [[0], [1]])
        // Fewer ranks than CPUs: each rank gets its own contiguous share, every CPU used once.
        XCTAssertEqual(place(ranks: 2, cpus: [0, 1, 2, 3]), [[0, 1], [2, 3]])
        XCTAssertEqual(place(ranks: 3, cpus: Array(4...10)), [[4, 5], [6, 7], [8, 9, 10]])
    }

    func testNothingToBind() {
        XCTAssertEqual(place(ranks: 1, cpus: [0, 1]), [nil], "one rank keeps every CPU")
        XCTAssertEqual(place(ranks: 4, cpus: [0]), [nil, nil, nil, nil], "one CPU: nothing to choose")
        XCTAssertEqual(place(ranks: 4, cpus: []), [nil, nil, nil, nil], "affinity unknown")
        XCTAssertEqual(place(.none, ranks: 8, cpus: [0, 1]), Array(repeating: nil, count: 8))
    }

    func testCPUListsRoundTrip() {
        XCTAssertEqual(CPUBinding.parseList("0"), [0])
        XCTAssertEqual(CPUBinding.parseList("3,1-2, 7"), [1, 2, 3, 7])
        XCTAssertEqual(CPUBinding.parseList("2-2,2"), [2])
        XCTAssertEqual(CPUBinding.parseList("1023"), [1023])
        for bad in ["", "x", "1,", ",1", "3-1", "-1", "1-2-3", "1-", "1024", "0-9999999999"] {
            XCTAssertNil(CPUBinding.parseList(bad), bad)
        }
        XCTAssertEqual(CPUBinding.formatList([0]), "0")
        XCTAssertEqual(CPUBinding.formatList([7, 1, 2, 3, 5]), "1-3,5,7")
        for list in [[0], [0, 1], [1, 3, 4, 5, 9]] {
            XCTAssertEqual(CPUBinding.parseList(CPUBinding.formatList(list)), list)
        }
    }

    #if os(Linux)
    /// Binding is real: a thread bound to one CPU reads back exactly that CPU, threads it starts inherit it, and the
    /// thread that started it keeps its own mask.
    func testBindingRestrictsTheThreadAndWhatItStarts() throws {
        let before = CPUBinding.allowedCPUs()
        let target = try XCTUnwrap(before.last, "sched_getaffinity returned no CPU")
        /// Written by the two threads, read after `done` (which orders the accesses).
        final class Seen: @unchecked Sendable { var bound: [Int] = [], inherited: [Int] = [], failure: Error? }
        let seen = Seen()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            do { try CPUBinding.bindCallingThread(to: [target]) } catch { seen.failure = error }
            seen.bound = CPUBinding.allowedCPUs()
            let child = Thread { seen.inherited = CPUBinding.allowedCPUs(); done.signal() }
            child.start()
        }
        thread.start()
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        XCTAssertNil(seen.failure)
        XCTAssertEqual(seen.bound, [target])
        XCTAssertEqual(seen.inherited, [target])
        XCTAssertEqual(CPUBinding.allowedCPUs(), before)
        XCTAssertThrowsError(try CPUBinding.bindCallingThread(to: [4096])) { error in
            XCTAssertTrue("\(error)".contains("4096"), "\(error)")
        }
    }
    #endif
}
