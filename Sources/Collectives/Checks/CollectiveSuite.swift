import Foundation

/// The collective correctness suite (`titan collectives`): every collective × sizes × groups × ops (and the bfloat16
/// payloads of mixed precision: all-gather, reduce-scatter sum, all-to-all),
/// each result checked on every rank against a reference computed locally from the distinct data
/// every rank is known to contribute, and the bytes this rank sent and received against what its algorithm
/// moves (ring all-gather and reduce-scatter (n-1)/n of the buffer, ring all-reduce 2(n-1)/n, all-to-all the
/// off-rank splits, the chain broadcast the buffer once per link). One line per case, then "N passed, N failed".
public final class CollectiveSuite {
    let comm: Communicator
    let print: (String) -> Void
    private var passed = 0
    private var failed = 0

    /// Total buffer size of the largest case of each collective (16 MiB: nccl-tests' scale).
    let largeBytes: Int

    public init(comm: Communicator, largeBytes: Int = 16 << 20, print: @escaping (String) -> Void) {
        self.comm = comm
        self.largeBytes = largeBytes
        self.print = print
    }

    /// Runs every case; returns the number of failures (the same on every rank).
    public func run() throws -> Int {
        let n = comm.worldSize
        // The world, contiguous halves ("rows") and strided pairs ("columns"), as a device mesh makes them.
        var groups: [(String, ProcessGroup)] = [("world", comm.world)]
        if n > 1 {
            let rowLength = (n + 1) / 2
            let rows = stride(from: 0, to: n, by: rowLength).map { Array($0..<min($0 + rowLength, n)) }
            groups.append(("rows", try comm.splitGroups(rows)))
            let columns = (0..<2).map { c in Array(stride(from: c, to: n, by: 2)) }
            groups.append(("columns", try comm.splitGroups(columns)))
        }
        // On several hosts (with --comm.algorithm auto), every case under both algorithms.
        let chosen = comm.algorithm
        defer { comm.setAlgorithm(chosen) }
        let algorithms: [CollectiveAlgorithm] = chosen == .auto && comm.world.hostCount > 1 ? [.ring, .hierarchical] : [chosen]
        for algorithm in algorithms {
            comm.setAlgorithm(algorithm)
            for (name, group) in groups { try run(group, group.algorithm == .ring ? name : "\(name) \(group.algorithm.rawValue)") }
        }
        print("\(passed) passed, \(failed) failed")
        return failed
    }

    private func run(_ group: ProcessGroup, _ name: String) throws {
            for perRank in [0, 1, 7, 1000, largeBytes / 4 / group.size] {
                try allGather(group, name, perRank)
                try allGatherUneven(group, name, perRank)
                for op in ReduceOp.allCases where op != .max { try reduceScatter(group, name, perRank, op) }
                for op in ReduceOp.allCases { try allReduce(group, name, perRank * group.size, op) }
                try allToAll(group, name, perRank)
                // The same number of cases on every group, even of size 1: ranks stay in step.
                for root in [0, group.size - 1] { try broadcast(group, name, perRank * group.size, root: root) }
                try bfloat16Cases(group, name, perRank)
            }
            try allReduceInt(group, name)
            try allGatherBytes(group, name)
            try barrier(group, name)
            try determinism(group, name)
            try interHostBytes(group, name)
            try allToAllRows(group, name)
    }

    // MARK: data every rank can recompute: exact in Float32 (multiples of 1/2, |v| < 2100), so
    // sums of up to thousands of ranks are exact and comparisons can be bitwise.

    static func value(rank: Int, index: Int, salt: Int = 0) -> Float {
        Float(((rank + 1) &* 7919 &+ index &* 104_729 &+ salt &* 31) % 4093) * 0.5 - 1000
    }

    static func data(rank: Int, count: Int, salt: Int = 0) -> [Float] {
        (0..<count).map { value(rank: rank, index: $0, salt: salt) }
    }

    /// Records a case: every rank's verdict is combined over the world, so all ranks agree.
    private func record(_ name: String, _ ok: Bool, _ detail: @autoclosure () -> String = "") throws {
        let caseIndex = Int64(passed + failed)
        let combined = try comm.world.allReduce([Int64(ok ? 0 : 1), caseIndex, -caseIndex], op: .max)
        guard combined[1] == -combined[2] else {
            throw CollectiveError.invalidArgument(nil, "suite ranks out of step at case \(caseIndex) (\(name)): a suite bug")
        }
        let failures = combined[0]
        if failures == 0 {
            passed += 1
            print("PASS \(name)")
        } else {
            failed += 1
            print("FAIL \(name)\(ok ? ": wrong on another rank" : ": rank \(comm.rank): \(detail())")")
        }
    }

    /// Runs one collective and compares the payload bytes and messages this rank sent and received for `kind`
    /// meanwhile with the algorithm's: `sent` and `received` list the chunks (bytes, element size) it moves, each in
    /// `Segments` (an empty chunk is one empty message: every pair exchanges one). "" when they match.
    /// The plans are the flat algorithms'; under the hierarchical ones only the results are checked here (and the bytes
    /// that cross hosts, `interHostBytes`).
    private func traffic(_ g: ProcessGroup, _ kind: CollectiveKind, sent: [(Int, Int)], received: [(Int, Int)],
                         _ body: () throws -> Void) rethrows -> String {
        guard g.algorithm == .ring || kind == .broadcast else { try body(); return "" }
        func count(_ chunks: [(Int, Int)]) -> Traffic.Count {
            Traffic.Count(bytes: chunks.reduce(0) { $0 + $1.0 },
                          messages: chunks.reduce(0) { $0 + Segments.of($1.0, elementSize: $1.1).count })
        }
        let before = comm.traffic
        try body()
        let d = comm.traffic - before
        let got = (d.sent(kind), d.received(kind)), want = (count(sent), count(received))
        guard got != want else { return "" }
        return "sent \(got.0.bytes) bytes in \(got.0.messages) messages, received \(got.1.bytes) in \(got.1.messages); "
            + "the algorithm sends \(want.0.bytes) in \(want.0.messages), receives \(want.1.bytes) in \(want.1.messages); "
    }

    /// The chunks of `sizes` (bytes) but the one at `skipped`, as (bytes, element size).
    private static func chunks(_ sizes: [Int], skipping skipped: Int, elementSize: Int = 4) -> [(Int, Int)] {
        sizes.enumerated().filter { $0.offset != skipped }.map { ($0.element, elementSize) }
    }

    private func firstMismatch(_ got: [Float], _ want: [Float]) -> String {
        guard got.count == want.count else { return "length \(got.count), expected \(want.count)" }
        for i in 0..<got.count where got[i].bitPattern != want[i].bitPattern {
            return "element \(i): \(got[i]), expected \(want[i])"
        }
        return ""
    }

    // MARK: cases

    private func allGather(_ g: ProcessGroup, _ gname: String, _ count: Int) throws {
        let input = Self.data(rank: comm.rank, count: count, salt: 1)
        var got: [Float] = []
        let each = Array(repeating: count * 4, count: g.size)
        let wire = try traffic(g, .allGather, sent: Self.chunks(each, skipping: (g.rank + 1) % g.size),
                               received: Self.chunks(each, skipping: g.rank)) { got = try g.allGather(input) }
        let want = g.members.flatMap { Self.data(rank: $0, count: count, salt: 1) }
        try record("all_gather \(gname) n=\(g.size) count=\(count)", got == want && wire.isEmpty, wire + firstMismatch(got, want))
    }

    private func allGatherUneven(_ g: ProcessGroup, _ gname: String, _ count: Int) throws {
        // Member i contributes count + i elements, and member 0 nothing when count is 0.
        let counts = (0..<g.size).map { count == 0 && $0 == 0 ? 0 : count + $0 }
        let input = Self.data(rank: comm.rank, count: counts[g.rank], salt: 2)
        var got: [Float] = []
        // The counts first (one Int64 each), then every chunk but the next member's is sent, every chunk but its own received.
        let n = g.size, sizes = counts.map { $0 * 4 }
        let counts8 = Array(repeating: 8, count: n)
        let wire = try traffic(g, .allGather,
                               sent: Self.chunks(counts8, skipping: (g.rank + 1) % n, elementSize: 8) + Self.chunks(sizes, skipping: (g.rank + 1) % n),
                               received: Self.chunks(counts8, skipping: g.rank, elementSize: 8) + Self.chunks(sizes, skipping: g.rank)) {
            got = try g.allGatherVariable(input).flatMap { $0 }
        }
        let want = g.members.enumerated().flatMap { Self.data(rank: $1, count: counts[$0], salt: 2) }
        try record("all_gather_v \(gname) n=\(g.size) count=\(count)+i", got == want && wire.isEmpty, wire + firstMismatch(got, want))
    }

    private func reduceScatter(_ g: ProcessGroup, _ gname: String, _ count: Int, _ op: ReduceOp) throws {
        let input = Self.data(rank: comm.rank, count: count * g.size, salt: 3)
        var got = [Float](repeating: .nan, count: count)
        // Every chunk but its own is sent (its partial sum), every chunk but the previous member's received.
        let each = Array(repeating: count * 4, count: g.size)
        let wire = try traffic(g, .reduceScatter, sent: Self.chunks(each, skipping: g.rank),
                               received: Self.chunks(each, skipping: (g.rank + g.size - 1) % g.size)) {
            try input.withUnsafeBufferPointer { i in
                try got.withUnsafeMutableBufferPointer { o in try g.reduceScatter(i, into: o, op: op) }
            }
        }
        var want = [Float](repeating: 0, count: count)
        for m in g.members {
            let d = Self.data(rank: m, count: count * g.size, salt: 3)
            for j in 0..<count { want[j] += d[g.rank * count + j] }
        }
        if op == .avg { want = want.map { $0 / Float(g.size) } }
        let inputIntact = input == Self.data(rank: comm.rank, count: count * g.size, salt: 3)
        try record("reduce_scatter \(op) \(gname) n=\(g.size) count=\(count)", got == want && inputIntact && wire.isEmpty,
                   wire + (inputIntact ? firstMismatch(got, want) : "the input buffer was modified"))
    }

    private func allReduce(_ g: ProcessGroup, _ gname: String, _ count: Int, _ op: ReduceOp) throws {
        // Reduce-scatter then all-gather of n near-equal chunks: every chunk but one crosses each link twice.
        let n = g.size, me = g.rank
        let sizes = ChunkLayout.even(count: count, parts: n, elementSize: 4).sizes
        var got: [Float] = []
        let wire = try traffic(g, .allReduce, sent: Self.chunks(sizes, skipping: me) + Self.chunks(sizes, skipping: (me + 1) % n),
                               received: Self.chunks(sizes, skipping: (me + n - 1) % n) + Self.chunks(sizes, skipping: me)) {
            got = try g.allReduce(Self.data(rank: comm.rank, count: count, salt: 4), op: op)
        }
        let all = g.members.map { Self.data(rank: $0, count: count, salt: 4) }
        var want = all[0]
        for d in all.dropFirst() {
            for j in 0..<count { want[j] = op == .max ? Swift.max(want[j], d[j]) : want[j] + d[j] }
        }
        if op == .avg { want = want.map { $0 / Float(g.size) } }
        try record("all_reduce \(op) \(gname) n=\(g.size) count=\(count)", got == want && wire.isEmpty, wire + firstMismatch(got, want))
    }

    private func allReduceInt(_ g: ProcessGroup, _ gname: String) throws {
        let mine = (0..<5).map { Int64(comm.rank * 1_000_003 + $0) << 20 }
        let gotSum = try g.allReduce(mine, op: .sum)
        let gotMax = try g.allReduce(mine.map { Int32(truncatingIfNeeded: $0 >> 20) }, op: .max)
        let wantSum = (0..<5).map { j in g.members.reduce(Int64(0)) { $0 + (Int64($1 * 1_000_003 + j) << 20) } }
        let wantMax = (0..<5).map { j in Int32(g.members.max()! * 1_000_003 + j) }
        try record("all_reduce int64 sum, int32 max \(gname) n=\(g.size)", gotSum == wantSum && gotMax == wantMax,
                   "sum \(gotSum) vs \(wantSum), max \(gotMax) vs \(wantMax)")
    }

    /// Split sizes that differ per (source, destination) pair, with some empty splits.
    static func split(_ source: Int, _ destination: Int, _ count: Int) -> Int {
        if count == 0 || (source + destination) % 3 == 0 { return 0 }
        return count + (source * 3 + destination * 5) % 4
    }

    private func allToAll(_ g: ProcessGroup, _ gname: String, _ count: Int) throws {
        let n = g.size, me = g.rank
        let sendCounts = (0..<n).map { Self.split(me, $0, count) }
        let receiveCounts = (0..<n).map { Self.split($0, me, count) }
        // The block for destination j is data(rank, salt: 5 + j) truncated to its split.
        let send = (0..<n).flatMap { j in Self.data(rank: comm.rank, count: sendCounts[j], salt: 5 + j) }
        var got = [Float](repeating: .nan, count: receiveCounts.reduce(0, +))
        let wire = try traffic(g, .allToAll, sent: Self.chunks(sendCounts.map { $0 * 4 }, skipping: me),
                               received: Self.chunks(receiveCounts.map { $0 * 4 }, skipping: me)) {
            try send.withUnsafeBufferPointer { s in
                try got.withUnsafeMutableBufferPointer { r in
                    try g.allToAll(s, sendCounts: sendCounts, into: r, receiveCounts: receiveCounts)
                }
            }
        }
        let want = (0..<n).flatMap { i in Self.data(rank: g.members[i], count: receiveCounts[i], salt: 5 + me) }
        try record("all_to_all_v \(gname) n=\(n) count~\(count)", got == want && wire.isEmpty, wire + firstMismatch(got, want))
    }

    private func broadcast(_ g: ProcessGroup, _ gname: String, _ count: Int, root: Int) throws {
        var buffer = g.rank == root ? Self.data(rank: comm.rank, count: count, salt: 6) : [Float](repeating: .nan, count: count)
        // Along the chain from the root: every member but the last sends the buffer once, every one but the root receives it.
        let position = (g.rank + g.size - root) % g.size
        let wire = try traffic(g, .broadcast, sent: position < g.size - 1 ? [(count * 4, 4)] : [],
                               received: position > 0 ? [(count * 4, 4)] : []) {
            try buffer.withUnsafeMutableBufferPointer { try g.broadcast($0, root: root) }
        }
        let want = Self.data(rank: g.members[root], count: count, salt: 6)
        try record("broadcast root=\(root) \(gname) n=\(g.size) count=\(count)", buffer == want && wire.isEmpty, wire + firstMismatch(buffer, want))
    }

    // MARK: bfloat16 (mixed precision's payloads)

    /// Small integers, exact in bfloat16 (8 significant bits), and so are their sums over up to 32 ranks: comparisons
    /// stay bitwise. (How a bfloat16 sum rounds is BFloat16's unit test.)
    static func bf16Data(rank: Int, count: Int, salt: Int) -> [BFloat16] {
        (0..<count).map { BFloat16(Float(((rank + 1) &* 7 &+ $0 &* 13 &+ salt &* 5) % 17 - 8)) }
    }

    private func firstMismatch(_ got: [BFloat16], _ want: [BFloat16]) -> String {
        firstMismatch(got.map(\.float), want.map(\.float))
    }

    /// All-gather, reduce-scatter (sum) and all-to-all of bfloat16 payloads: the same results and half the bytes.
    private func bfloat16Cases(_ g: ProcessGroup, _ gname: String, _ count: Int) throws {
        let n = g.size, me = g.rank
        let input = Self.bf16Data(rank: comm.rank, count: count, salt: 1)
        var gathered: [BFloat16] = []
        let each = Array(repeating: count * 2, count: n)
        var wire = try traffic(g, .allGather, sent: Self.chunks(each, skipping: (me + 1) % n, elementSize: 2),
                               received: Self.chunks(each, skipping: me, elementSize: 2)) { gathered = try g.allGather(input) }
        var want = g.members.flatMap { Self.bf16Data(rank: $0, count: count, salt: 1) }
        try record("all_gather bfloat16 \(gname) n=\(n) count=\(count)", gathered == want && wire.isEmpty, wire + firstMismatch(gathered, want))

        let full = Self.bf16Data(rank: comm.rank, count: count * n, salt: 3)
        var reduced = [BFloat16](repeating: BFloat16(.nan), count: count)
        wire = try traffic(g, .reduceScatter, sent: Self.chunks(each, skipping: me, elementSize: 2),
                           received: Self.chunks(each, skipping: (me + n - 1) % n, elementSize: 2)) {
            try full.withUnsafeBufferPointer { i in
                try reduced.withUnsafeMutableBufferPointer { o in try g.reduceScatter(i, into: o, op: .sum) }
            }
        }
        var sums = [Float](repeating: 0, count: count)
        for m in g.members {
            let d = Self.bf16Data(rank: m, count: count * n, salt: 3)
            for j in 0..<count { sums[j] += d[me * count + j].float }
        }
        want = sums.map { BFloat16($0) }
        try record("reduce_scatter sum bfloat16 \(gname) n=\(n) count=\(count)", reduced == want && wire.isEmpty, wire + firstMismatch(reduced, want))

        let sendCounts = (0..<n).map { Self.split(me, $0, count) }, receiveCounts = (0..<n).map { Self.split($0, me, count) }
        let send = (0..<n).flatMap { j in Self.bf16Data(rank: comm.rank, count: sendCounts[j], salt: 5 + j) }
        var received = [BFloat16](repeating: BFloat16(.nan), count: receiveCounts.reduce(0, +))
        wire = try traffic(g, .allToAll, sent: Self.chunks(sendCounts.map { $0 * 2 }, skipping: me, elementSize: 2),
                           received: Self.chunks(receiveCounts.map { $0 * 2 }, skipping: me, elementSize: 2)) {
            try send.withUnsafeBufferPointer { s in
                try received.withUnsafeMutableBufferPointer { r in
                    try g.allToAll(s, sendCounts: sendCounts, into: r, receiveCounts: receiveCounts)
                }
            }
        }
        want = (0..<n).flatMap { i in Self.bf16Data(rank: g.members[i], count: receiveCounts[i], salt: 5 + me) }
        try record("all_to_all_v bfloat16 \(gname) n=\(n) count~\(count)", received == want && wire.isEmpty, wire + firstMismatch(received, want))
    }

    /// Hierarchical all-gather and reduce-scatter send each byte across the host boundary once per remote host: the
    /// group's members together send (hosts − 1) × the buffer to other hosts (the ring sends more whenever its chain
    /// changes host more than once). Recorded on every group (passing where it does not apply): ranks stay in step.
    private func interHostBytes(_ g: ProcessGroup, _ gname: String) throws {
        guard g.algorithm == .hierarchical, g.hostCount > 1 else {
            try record("inter-host bytes \(gname) n=\(g.size) (single host or ring: nothing to check)", true)
            return
        }
        let count = 1001, total = count * g.size * 4
        let before = comm.traffic
        _ = try g.allGather(Self.data(rank: comm.rank, count: count, salt: 7))
        var reduced = [Float](repeating: 0, count: count)
        try Self.data(rank: comm.rank, count: count * g.size, salt: 8).withUnsafeBufferPointer { i in
            try reduced.withUnsafeMutableBufferPointer { o in try g.reduceScatter(i, into: o) }
        }
        let d = comm.traffic - before
        let sums = try g.allReduce([Int64(d.sentInterHost(.allGather).bytes), Int64(d.sentInterHost(.reduceScatter).bytes)], op: .sum)
        let want = Int64((g.hostCount - 1) * total)
        try record("inter-host bytes \(gname) n=\(g.size) hosts=\(g.hostCount)", sums == [want, want],
                   "all-gather and reduce-scatter sent \(sums) bytes across hosts, expected \(want) each")
    }

    /// The expert-parallel dispatch's row all-to-all: 3 rows to every member, rows 0 and 2 equal (a token routed to two
    /// experts there). The flat result, bit for bit; under the hierarchical algorithm on several hosts, each distinct row
    /// crosses to a remote host once (with the row counts and index lists), fewer bytes than the flat 3 rows per member.
    private func allToAllRows(_ g: ProcessGroup, _ gname: String) throws {
        let n = g.size, rowLength = 1001, rowBytes = rowLength * 4
        let keys = (0..<(3 * n)).map { Int32($0 % 3 % 2) }
        let send = keys.flatMap { Self.data(rank: comm.rank, count: rowLength, salt: 20 + Int($0)) }
        var got = [Float](repeating: .nan, count: 3 * n * rowLength)
        let before = comm.traffic
        try send.withUnsafeBufferPointer { s in
            try keys.withUnsafeBufferPointer { k in
                try got.withUnsafeMutableBufferPointer { r in
                    try g.allToAllRows(s, rowLength: rowLength, sendRows: Array(repeating: 3, count: n), rowKeys: k, into: r,
                                       receiveRows: Array(repeating: 3, count: n))
                }
            }
        }
        let crossed = try g.allReduce([Int64((comm.traffic - before).sentInterHost(.allToAll).bytes)], op: .sum)[0]
        let want = g.members.flatMap { m in (0..<3).flatMap { Self.data(rank: m, count: rowLength, salt: 20 + $0 % 2) } }
        let hosts = HostLayout(hostIndex: g.members.map { comm.spec.hostIndex(ofRank: $0) })
        let remote = (0..<n).map { i in hosts.hosts.indices.filter { $0 != hosts.hostOfMember[i] } }
        let flat = (0..<n).map { i in remote[i].map { hosts.hosts[$0].count * 3 * rowBytes }.reduce(0, +) }.reduce(0, +)
        let dedup = (0..<n).map { i in remote[i].map { 8 * (1 + hosts.hosts[$0].count) + 4 * 3 * hosts.hosts[$0].count + 2 * rowBytes }.reduce(0, +) }.reduce(0, +)
        let wantCrossed = g.algorithm == .hierarchical ? dedup : flat
        try record("all_to_all_rows \(gname) n=\(n) inter-host bytes \(wantCrossed) (flat \(flat))", got == want && crossed == Int64(wantCrossed),
                   "crossed \(crossed) bytes, expected \(wantCrossed); " + firstMismatch(got, want))
    }

    private func allGatherBytes(_ g: ProcessGroup, _ gname: String) throws {
        let blob = Array("rank \(comm.rank) says hello".utf8) + (g.rank == 0 ? [] : [UInt8(g.rank)])
        let got = try g.allGatherBytes(blob)
        let want = g.members.enumerated().map { i, m in Array("rank \(m) says hello".utf8) + (i == 0 ? [] : [UInt8(i)]) }
        try record("all_gather_bytes \(gname) n=\(g.size)", got == want, "got \(got.map(\.count)) bytes")
    }

    private func barrier(_ g: ProcessGroup, _ gname: String) throws {
        try g.barrier()
        try record("barrier \(gname) n=\(g.size)", true)
    }

    /// Non-exact data (sums round): every member must still hold bitwise the same all-reduce result.
    private func determinism(_ g: ProcessGroup, _ gname: String) throws {
        var rng = SplitMix(seed: UInt64(comm.rank) &+ 12345)
        let mine = (0..<10_007).map { _ in Float(rng.nextUnit() * 2 - 1) / 3 }
        let result = try g.allReduce(mine, op: .sum)
        let digest = Int64(bitPattern: fnv1a64(result.flatMap { withUnsafeBytes(of: $0.bitPattern, Array.init) }))
        let digests = try g.allGather([digest])
        try record("all_reduce bitwise-identical on every member \(gname) n=\(g.size)", Set(digests).count == 1,
                   "digests \(digests)")
    }
}

/// A tiny deterministic generator (SplitMix64) for test data.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func nextUnit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
