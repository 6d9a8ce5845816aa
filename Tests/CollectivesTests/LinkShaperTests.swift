import Foundation
import XCTest
@testable import Collectives

/// The simulated network over real ipc sockets: 4 ranks as threads (each its own communicator and its own mapping of
/// the job's link file, as rank processes have), two hosts of two ranks, the link between hosts at 10 MB/s, each
/// rank's link within its host at 100 MB/s.
final class LinkShaperTests: XCTestCase {
    static let interHostBytesPerSecond = 10e6
    static let intraHostBytesPerSecond = 100e6

    /// Runs `body` on ranks 0-3 at once; returns each rank's result.
    private func run<T>(_ body: @escaping @Sendable (Communicator) throws -> T) throws -> [T] {
        let folder = "/tmp/tls-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: folder) }
        let network = NetworkSpec(hosts: Array(repeating: NetworkSpec.Host(
            interHost: NetworkSpec.Link(bytesPerSecond: Self.interHostBytesPerSecond),
            intraHost: NetworkSpec.Link(bytesPerSecond: Self.intraHostBytesPerSecond)), count: 2))
        let spec = ClusterSpec(jobID: "shaper-test", worldSize: 4, transport: .ipc, ipcDirectory: folder, timeoutSeconds: 20,
                               transportSecurity: .none, hostIndexOfRank: [0, 0, 1, 1], network: network)
        let results = Results<T>()
        let done = DispatchGroup()
        for rank in 0..<4 {
            done.enter()
            Thread {
                defer { done.leave() }
                let result = Result { () throws -> T in
                    let comm = try Communicator(spec: spec, rank: rank)
                    defer { comm.shutdown() }
                    return try body(comm)
                }
                results.set(rank, result)
            }.start()
        }
        done.wait()
        return try (0..<4).map { try results.values[$0]!.get() }
    }

    private final class Results<T>: @unchecked Sendable {
        private let lock = NSLock()
        private(set) var values: [Int: Result<T, Error>] = [:]
        func set(_ rank: Int, _ result: Result<T, Error>) { lock.lock(); values[rank] = result; lock.unlock() }
    }

    /// When (this process's uptime, seconds) this rank left a barrier of the world and when it finished an all-gather
    /// of `bytesPerRank` from each member of `group`. Ranks leave a barrier at slightly different times (and a barrier
    /// message may queue behind other ranks' data on a host's link), so a phase lasts from the first start to the
    /// last end over the ranks.
    private static func timedAllGather(_ group: ProcessGroup, bytesPerRank: Int, world: ProcessGroup) throws -> ClosedRange<Double> {
        let count = bytesPerRank / 4
        let input = [Float](repeating: Float(group.rank), count: count)
        var output = [Float](repeating: 0, count: count * group.size)
        try world.barrier()
        let start = ProcessInfo.processInfo.systemUptime
        try input.withUnsafeBufferPointer { i in try output.withUnsafeMutableBufferPointer { try group.allGather(i, into: $0) } }
        XCTAssertEqual(output[count * (group.size - 1)], Float(group.size - 1))
        return start...ProcessInfo.processInfo.systemUptime
    }

    private static func span(_ times: [ClosedRange<Double>]) -> Double {
        times.map(\.upperBound).max()! - times.map(\.lowerBound).min()!
    }

    func testIntraHostTrafficIsNotSlowedByTheInterHostLimit() throws {
        let megabyte = 1 << 20
        let results = try run { comm -> (within: ClosedRange<Double>, across: ClosedRange<Double>, interHost: Int, sent: Int) in
            let pairs = try comm.splitGroups([[0, 1], [2, 3]])       // within a host
            let crossing = try comm.splitGroups([[0, 3], [1, 2]])    // between the hosts
            let before = comm.traffic
            let within = try Self.timedAllGather(pairs, bytesPerRank: megabyte, world: comm.world)
            let middle = comm.traffic
            let across = try Self.timedAllGather(crossing, bytesPerRank: megabyte, world: comm.world)
            XCTAssertEqual((middle - before).totalSentInterHost.bytes, 0)
            let d = comm.traffic - middle
            return (within, across, d.totalSentInterHost.bytes, d.sent(.allGather).bytes)
        }
        for (rank, r) in results.enumerated() {
            XCTAssertEqual(r.interHost, megabyte, "rank \(rank): every byte it sent across counts as inter-host")
            XCTAssertEqual(r.sent, megabyte)
        }
        let alone = Double(megabyte) / Self.interHostBytesPerSecond   // 0.105 s per MiB over a host's link
        let within = Self.span(results.map(\.within)), across = Self.span(results.map(\.across))
        XCTAssertLessThan(within, alone / 2, "pairs within a host are not held to the inter-host rate")
        XCTAssertGreaterThan(within, Double(megabyte) / Self.intraHostBytesPerSecond * 0.95, "but to the ranks' own links")
        // Two flows leave each host at once (0→3 and 1→2 from host 0): they share its link, so both are done only
        // after twice the time of one.
        XCTAssertGreaterThan(across, 2 * alone * 0.95, "two flows share one host's link")
        XCTAssertLessThan(across, 2 * alone * 1.5 + 0.1)
    }
}
