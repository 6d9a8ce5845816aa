import Foundation
import XCTest
@testable import Collectives

/// Every collective algorithm driven over an in-memory channel (no sockets): results against a straightforward local
/// computation (reductions in the order the algorithm promises, so the comparison is exact), and the bytes and messages
/// each member sent against the algorithm's plan.
final class AlgorithmTests: XCTestCase {
    private let sizes = [1, 2, 3, 5]

    /// Per-member data: member r's floats are distinct across members and positions.
    private func data(_ r: Int, _ count: Int, salt: Float = 0) -> [Float] {
        (0..<count).map { Float(r) * 1000.25 + Float($0) * 0.3125 + salt + 1 / Float($0 + 3) }
    }

    func testRingAllGatherUneven() throws {
        for n in sizes {
            let counts = (0..<n).map { [7, 0, 300_000, 1][$0 % 4] }   // empty chunks and several segments
            let layout = ChunkLayout(sizes: counts.map { $0 * 4 })
            let expected = (0..<n).flatMap { data($0, counts[$0]) }
            let net = MemoryNetwork(size: n)
            let outputs = try net.run { ch in
                var out = [Float](repeating: .nan, count: expected.count)
                let own = self.data(ch.me, counts[ch.me])
                for (i, v) in own.enumerated() { out[layout.offsets[ch.me] / 4 + i] = v }
                try out.withUnsafeMutableBytes { try ringAllGather(ch, output: $0.baseAddress!, layout: layout, elementSize: 4) }
                return out
            }
            for r in 0..<n {
                XCTAssertEqual(outputs[r], expected, "n \(n) member \(r)")
                // Every chunk but the next member's own: it sends its own and forwards the rest.
                XCTAssertEqual(net.sentBytes[r], layout.total - layout.sizes[(r + 1) % n], "n \(n) member \(r)")
                let segments = (0..<n).filter { $0 != (r + 1) % n }.map { Segments.of(layout.sizes[$0], elementSize: 4).count }
                XCTAssertEqual(net.sentMessages[r], n > 1 ? segments.reduce(0, +) : 0, "n \(n) member \(r)")
            }
        }
    }

    func testRingReduceScatterSumsInRingOrder() throws {
        for n in sizes {
            let counts = (0..<n).map { [5, 200_000, 0, 3][$0 % 4] }
            let layout = ChunkLayout(sizes: counts.map { $0 * 4 })
            let total = counts.reduce(0, +)
            let inputs = (0..<n).map { data($0, total) }
            let net = MemoryNetwork(size: n)
            let outputs = try net.run { ch in
                var out = [Float](repeating: .nan, count: counts[ch.me])
                let input = inputs[ch.me]
                try input.withUnsafeBytes { i in
                    try out.withUnsafeMutableBytes { o in
                        try ringReduceScatter(ch, input: i.baseAddress!, output: o.baseAddress ?? UnsafeMutableRawPointer(mutating: i.baseAddress!),
                                              layout: layout, reduction: ByteReduction(Float.self, .sum))
                    }
                }
                return out
            }
            for r in 0..<n {
                // Chunk r is summed starting at member r+1, around the ring, ending with member r.
                let o = layout.offsets[r] / 4
                let expected = (0..<counts[r]).map { i -> Float in
                    var s = inputs[(r + 1) % n][o + i]
                    for k in stride(from: 2, through: n, by: 1) { s = s + inputs[(r + k) % n][o + i] }
                    return s
                }
                XCTAssertEqual(outputs[r], expected, "n \(n) member \(r)")
                if n > 1 { XCTAssertEqual(net.sentBytes[r], layout.total - layout.sizes[r], "n \(n) member \(r)") }
            }
        }
    }

    func testRingAllReduceAverageIsTheSameBitsEverywhere() throws {
        for n in sizes {
            let count = 100_003
            let net = MemoryNetwork(size: n)
            let outputs = try net.run { ch in
                var buf = self.data(ch.me, count, salt: 0.5)
                try buf.withUnsafeMutableBytes { b in
                    try ringAllReduce(ch, buffer: b.baseAddress!, count: count, reduction: ByteReduction(Float.self, .avg)) { chunk, bytes in
                        Float.divide(chunk.assumingMemoryBound(to: Float.self), count: bytes / 4, by: n)
                    }
                }
                return buf
            }
            let layout = ChunkLayout.even(count: count, parts: n, elementSize: 4)
            let inputs = (0..<n).map { data($0, count, salt: 0.5) }
            var expected = [Float](repeating: 0, count: count)
            for c in 0..<n {
                for i in (layout.offsets[c] / 4)..<((layout.offsets[c] + layout.sizes[c]) / 4) {
                    var s = inputs[(c + 1) % n][i]
                    for k in stride(from: 2, through: n, by: 1) { s = s + inputs[(c + k) % n][i] }
                    expected[i] = s / Float(n)
                }
            }
            for r in 0..<n { XCTAssertEqual(outputs[r], expected, "n \(n) member \(r)") }
            // Reduce-scatter (all but its own chunk), then all-gather (all but the next member's chunk).
            for r in 0..<n where n > 1 {
                XCTAssertEqual(net.sentBytes[r], 2 * layout.total - layout.sizes[r] - layout.sizes[(r + 1) % n], "n \(n) member \(r)")
            }
        }
    }

    /// Member i sends allToAllSplit(i, j) floats to member j: some splits are empty, one spans several segments.
    static func allToAllSplit(_ i: Int, _ j: Int) -> Int {
        (i * 7 + j * 3) % 5 == 0 ? 0 : (i == 1 && j == 0 ? 150_000 : i + 2 * j + 1)
    }

    /// Every member's received buffer after `algorithm` (send, its layout, receive, its layout) ran the all-to-all-v of
    /// `allToAllSplit` over `net`.
    func allToAllV(_ net: MemoryNetwork, _ algorithm: @escaping (MemoryChannel, UnsafeRawPointer, ChunkLayout,
                                                                  UnsafeMutableRawPointer, ChunkLayout) throws -> Void) throws -> [[Float]] {
        let n = net.size, split = Self.allToAllSplit
        return try net.run { ch in
            let me = ch.me
            let sendCounts = (0..<n).map { split(me, $0) }, receiveCounts = (0..<n).map { split($0, me) }
            let send = (0..<n).flatMap { j in self.data(me, sendCounts[j], salt: Float(j) * 0.01) }
            var receive = [Float](repeating: .nan, count: receiveCounts.reduce(0, +))
            try send.withUnsafeBytes { s in
                try receive.withUnsafeMutableBytes { r in
                    try algorithm(ch, s.baseAddress ?? UnsafeRawPointer(bitPattern: 16)!, ChunkLayout(sizes: sendCounts.map { $0 * 4 }),
                                  r.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 16)!, ChunkLayout(sizes: receiveCounts.map { $0 * 4 }))
                }
            }
            return receive
        }
    }

    func testPairwiseAllToAllV() throws {
        let split = Self.allToAllSplit
        for n in sizes {
            let net = MemoryNetwork(size: n)
            let outputs = try allToAllV(net) { ch, s, sl, r, rl in
                try pairwiseAllToAll(ch, send: s, sendLayout: sl, receive: r, receiveLayout: rl, elementSize: 4)
            }
            for r in 0..<n {
                let expected = (0..<n).flatMap { i in data(i, split(i, r), salt: Float(r) * 0.01) }
                XCTAssertEqual(outputs[r], expected, "n \(n) member \(r)")
                let others = (0..<n).filter { $0 != r }
                XCTAssertEqual(net.sentBytes[r], others.map { split(r, $0) * 4 }.reduce(0, +))
                // One message per pair even when the split is empty.
                XCTAssertEqual(net.sentMessages[r], others.map { Segments.of(split(r, $0) * 4, elementSize: 4).count }.reduce(0, +))
            }
        }
    }

    func testChainBroadcastFromEveryRoot() throws {
        for n in sizes {
            for root in 0..<n {
                let count = 140_001
                let net = MemoryNetwork(size: n)
                let outputs = try net.run { ch in
                    var buf = ch.me == root ? self.data(root, count) : [Float](repeating: .nan, count: count)
                    try buf.withUnsafeMutableBytes { try chainBroadcast(ch, buffer: $0.baseAddress!, bytes: count * 4, root: root, elementSize: 4) }
                    return buf
                }
                for r in 0..<n {
                    XCTAssertEqual(outputs[r], data(root, count), "n \(n) root \(root) member \(r)")
                    let last = (root + n - 1) % n   // the chain's end forwards nothing
                    XCTAssertEqual(net.sentBytes[r], n == 1 || r == last ? 0 : count * 4, "n \(n) root \(root) member \(r)")
                }
            }
        }
    }

    func testDisseminationBarrierRounds() throws {
        for n in sizes {
            let net = MemoryNetwork(size: n)
            _ = try net.run { ch in try disseminationBarrier(ch); return [Float]() }
            let rounds = n > 1 ? Int(ceil(log2(Double(n)))) : 0
            XCTAssertEqual(net.sentMessages, Array(repeating: rounds, count: n), "n \(n)")
        }
    }

    // MARK: hierarchical

    /// Host layouts of groups: even, uneven (3+5), interleaved members (a subgroup in another order), one host, and
    /// hosts of one member each.
    private let hostLayouts: [[Int]] = [[0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1], [1, 0, 1, 2, 0], [0, 0, 0], [3, 1, 2]]

    func testHierarchicalAllGatherMovesTheRingsBytesToTheSamePlaces() throws {
        for hostIndex in hostLayouts {
            let n = hostIndex.count, hosts = HostLayout(hostIndex: hostIndex)
            let counts = (0..<n).map { [7, 0, 300_000, 1, 5][$0 % 5] }   // empty chunks and several segments
            let layout = ChunkLayout(sizes: counts.map { $0 * 4 })
            let expected = (0..<n).flatMap { data($0, counts[$0]) }
            let outputs = try MemoryNetwork(size: n).run { ch in
                var out = [Float](repeating: .nan, count: expected.count)
                for (i, v) in self.data(ch.me, counts[ch.me]).enumerated() { out[layout.offsets[ch.me] / 4 + i] = v }
                try out.withUnsafeMutableBytes {
                    try hierarchicalAllGather(ch, output: $0.baseAddress!, layout: layout, hosts: hosts, elementSize: 4)
                }
                return out
            }
            for r in 0..<n { XCTAssertEqual(outputs[r], expected, "hosts \(hostIndex) member \(r)") }
        }
    }

    /// The reference folds each host's members in group order, then the hosts in order: bit for bit.
    private func hierarchicalSum(_ inputs: [[Float]], _ hosts: HostLayout, _ range: Range<Int>) -> [Float] {
        func fold(_ parts: [[Float]]) -> [Float] {
            parts.dropFirst().reduce(parts[0]) { acc, part in zip(acc, part).map { $0 + $1 } }
        }
        return fold(hosts.hosts.map { host in fold(host.map { Array(inputs[$0][range]) }) })
    }

    func testHierarchicalReduceScatterFoldsWithinHostsThenOverHosts() throws {
        for hostIndex in hostLayouts {
            let n = hostIndex.count, hosts = HostLayout(hostIndex: hostIndex)
            let counts = (0..<n).map { [5, 200_000, 0, 3, 1][$0 % 5] }
            let layout = ChunkLayout(sizes: counts.map { $0 * 4 })
            let total = counts.reduce(0, +)
            let inputs = (0..<n).map { data($0, total, salt: 0.1) }
            let net = MemoryNetwork(size: n)
            let outputs = try net.run { ch in
                var out = [Float](repeating: .nan, count: counts[ch.me])
                try inputs[ch.me].withUnsafeBytes { i in
                    try out.withUnsafeMutableBytes { o in
                        try hierarchicalReduceScatter(ch, input: i.baseAddress!, output: o.baseAddress ?? UnsafeMutableRawPointer(mutating: i.baseAddress!),
                                                      layout: layout, hosts: hosts, reduction: ByteReduction(Float.self, .sum))
                    }
                }
                return out
            }
            for r in 0..<n {
                let range = (layout.offsets[r] / 4)..<((layout.offsets[r] + layout.sizes[r]) / 4)
                XCTAssertEqual(outputs[r].map(\.bitPattern), hierarchicalSum(inputs, hosts, range).map(\.bitPattern), "hosts \(hostIndex) member \(r)")
            }
        }
    }

    func testHierarchicalAllReduceIsTheSameBitsEverywhereInPlace() throws {
        for hostIndex in hostLayouts {
            let n = hostIndex.count, hosts = HostLayout(hostIndex: hostIndex), count = 100_003
            let inputs = (0..<n).map { data($0, count, salt: 0.5) }
            let outputs = try MemoryNetwork(size: n).run { ch in
                var buf = inputs[ch.me]
                try buf.withUnsafeMutableBytes { b in
                    try hierarchicalAllReduce(ch, buffer: b.baseAddress!, count: count, hosts: hosts, reduction: ByteReduction(Float.self, .sum)) { _, _ in }
                }
                return buf
            }
            let expected = hierarchicalSum(inputs, hosts, 0..<count)
            for r in 0..<n { XCTAssertEqual(outputs[r].map(\.bitPattern), expected.map(\.bitPattern), "hosts \(hostIndex) member \(r)") }
        }
    }

    func testHierarchicalAllToAllVDeliversTheFlatResult() throws {
        let split = Self.allToAllSplit
        for hostIndex in hostLayouts {
            let n = hostIndex.count, hosts = HostLayout(hostIndex: hostIndex)
            let outputs = try allToAllV(MemoryNetwork(size: n)) { ch, s, sl, r, rl in
                try hierarchicalAllToAll(ch, send: s, sendLayout: sl, receive: r, receiveLayout: rl, hosts: hosts, elementSize: 4)
            }
            for r in 0..<n {
                XCTAssertEqual(outputs[r], (0..<n).flatMap { i in data(i, split(i, r), salt: Float(r) * 0.01) }, "hosts \(hostIndex) member \(r)")
            }
        }
    }

    /// A member that receives a message of the wrong size gets an error, not garbage.
    func testSizeMismatchIsAnError() throws {
        let net = MemoryNetwork(size: 2)
        XCTAssertThrowsError(try net.run { ch in
            var buf = [Float](repeating: 1, count: ch.me == 0 ? 4 : 8)   // the members disagree on the size
            try buf.withUnsafeMutableBytes { try chainBroadcast(ch, buffer: $0.baseAddress!, bytes: $0.count, root: 0, elementSize: 4) }
            return buf
        })
    }
}

// MARK: - the in-memory channel

/// A payload on the heap, shared by the messages that hold it.
final class MemoryPayload {
    let bytes: UnsafeMutableRawPointer
    let count: Int
    init(count: Int) {
        self.count = count
        bytes = .allocate(byteCount: max(count, 1), alignment: 16)
    }
    deinit { bytes.deallocate() }
}

struct MemoryMessage: ChannelMessage {
    let payload: MemoryPayload
    var count: Int { payload.count }
    var bytes: UnsafeMutableRawPointer { payload.bytes }
    func share() throws -> MemoryMessage { self }
}

struct MemoryChannelError: Error { let reason: String }

/// Mailboxes between `size` members, one queue per (receiver, sender); counts what each member sent.
final class MemoryNetwork: @unchecked Sendable {
    let size: Int
    private let condition = NSCondition()
    private var mailboxes: [[[MemoryMessage]]]
    private(set) var sentBytes: [Int]
    private(set) var sentMessages: [Int]

    init(size: Int) {
        self.size = size
        mailboxes = Array(repeating: Array(repeating: [], count: size), count: size)
        sentBytes = Array(repeating: 0, count: size)
        sentMessages = Array(repeating: 0, count: size)
    }

    func post(_ m: MemoryMessage, from: Int, to: Int) {
        condition.lock()
        mailboxes[to][from].append(m)
        sentBytes[from] += m.count
        sentMessages[from] += 1
        condition.broadcast()
        condition.unlock()
    }

    func take(to: Int, from: Int) throws -> MemoryMessage {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(20)
        while mailboxes[to][from].isEmpty {
            if failed { throw MemoryChannelError(reason: "member \(to): another member failed") }
            if !condition.wait(until: deadline) { throw MemoryChannelError(reason: "member \(to): nothing from \(from) within 20 s") }
        }
        return mailboxes[to][from].removeFirst()
    }

    /// Runs `body` once per member, each on its own thread (the algorithms block on each other), and returns each
    /// member's result; rethrows the first error.
    func run<T>(_ body: @escaping (MemoryChannel) throws -> T) throws -> [T] {
        let results = Array(repeating: Result<T, Error>?.none, count: size)
        let box = Box(results)
        let done = DispatchGroup()
        for r in 0..<size {
            done.enter()
            let thread = Thread { [self] in
                let outcome = Result { try body(MemoryChannel(network: self, me: r)) }
                box.set(r, outcome)
                if case .failure = outcome { self.failAll() }
                done.leave()
            }
            thread.stackSize = 4 << 20
            thread.start()
        }
        done.wait()
        return try box.values.map { try $0!.get() }
    }

    /// Wakes every waiting member with an error (one member failed: the others would wait for it).
    private func failAll() {
        condition.lock()
        failed = true
        condition.broadcast()
        condition.unlock()
    }
    private var failed = false

    private final class Box<T>: @unchecked Sendable {
        private let lock = NSLock()
        private(set) var values: [T?]
        init(_ v: [T?]) { values = v }
        func set(_ i: Int, _ v: T) { lock.lock(); values[i] = v; lock.unlock() }
    }
}

final class MemoryChannel: Channel {
    let network: MemoryNetwork
    let me: Int
    var size: Int { network.size }

    init(network: MemoryNetwork, me: Int) {
        self.network = network
        self.me = me
    }

    func send(to peer: Int, bytes: UnsafeRawPointer, count: Int) throws {
        let m = try newMessage(bytes: count)
        if count > 0 { m.bytes.copyMemory(from: bytes, byteCount: count) }
        try send(to: peer, payload: m)
    }

    func send(to peer: Int, payload: MemoryMessage) throws {
        precondition(peer != me, "a member does not message itself")
        network.post(payload, from: me, to: peer)
    }

    func newMessage(bytes: Int) throws -> MemoryMessage { MemoryMessage(payload: MemoryPayload(count: bytes)) }

    func receive(from peer: Int, expectedBytes: Int) throws -> MemoryMessage {
        let m = try network.take(to: me, from: peer)
        guard m.count == expectedBytes else {
            throw MemoryChannelError(reason: "member \(me): \(m.count) bytes from \(peer), expected \(expectedBytes)")
        }
        return m
    }

    func waitForSends() throws {}
}
