import Foundation

/// The randomized collective fuzzer (`titan collectives --fuzz OPS --seed S`), in the spirit of nccl-tests' data checks
/// swept over random shapes: OPS random collectives (every kind, reduction op and element type of the API; sizes from 0
/// and 1 through odd counts up to a few MiB; all-to-all-v splits with zeros and heavy skew, and row all-to-alls whose
/// rows repeat (the expert-parallel dispatch); random subgroups; up to four
/// collectives in flight at once on different groups through the async API; ring and hierarchical algorithms, drawn per
/// op under `--comm.algorithm auto`, else the one chosen), each
/// checked on every rank against a reference computed locally.
///
/// Everything derives from the seed and the op index (the op's group, kind, type, sizes, algorithm and every rank's
/// input), so every rank knows every other rank's input, all ranks agree without talking, and `--fuzz-op K` reruns op K
/// alone. Reductions are compared bitwise with a fold in the algorithm's documented order (the ring's: chunk c over
/// members c+1, c+2, …, c; the hierarchical one's: members in group order within each host, then hosts in order).
/// Groups come from a fixed pool made up front (a rank has `ClusterSpec.maxGroupsPerRank` group slots).
public final class CollectiveFuzzer {
    let comm: Communicator
    let seed: UInt64
    let maxBytes: Int
    /// Prints on this rank (the caller decides which ranks' lines show).
    let print: (String) -> Void

    /// The communicator's algorithm when the fuzzer was made: auto draws ring or hierarchical per op, else every op runs it.
    private let chosen: CollectiveAlgorithm
    /// Pool groups (nil where this rank is not a member) and their members, the same on every rank.
    private var pool: [(members: [Int], group: ProcessGroup?)] = []

    public init(comm: Communicator, seed: UInt64, maxBytes: Int = 4 << 20, print: @escaping (String) -> Void) {
        self.comm = comm
        self.seed = seed
        self.maxBytes = maxBytes
        self.print = print
        chosen = comm.algorithm
    }

    /// Runs ops `0 ..< ops` (or only op `only`); returns the number of failed ops (the same on every rank).
    public func run(ops: Int, only: Int? = nil) throws -> Int {
        let n = comm.worldSize
        let hosts = Set((0..<n).map { comm.spec.hostIndex(ofRank: $0) }).count
        if comm.rank == 0 {
            print("fuzz: seed \(seed), \(only.map { "op \($0)" } ?? "\(ops) ops"), world \(n) on \(hosts) host(s)")
        }
        try makePool()
        defer { comm.setAlgorithm(chosen) }
        let start = DispatchTime.now().uptimeNanoseconds
        var passed = 0, failed = 0
        var next = only ?? 0
        let end = only.map { $0 + 1 } ?? ops
        while next < end {
            // A batch of 1-4 ops in flight at once, drawn from the seed and the batch's first op.
            var rng = SplitMix(seed: mix(seed, 0xBA7C4, UInt64(next)))
            let batch = only == nil ? min(end - next, 1 + Int(rng.next() % 4)) : 1
            let plans = (next..<(next + batch)).map { plan($0) }
            var checks: [() -> String] = []
            for p in plans { checks.append(try submit(p)) }
            var verdicts: [Int64] = []
            for (p, check) in zip(plans, checks) {
                let problem = check()
                if !problem.isEmpty { print("rank \(comm.rank): op \(p.index) \(p.description): \(problem)") }
                verdicts.append(problem.isEmpty ? 0 : 1)
            }
            comm.setAlgorithm(.ring)
            let combined = try comm.world.allReduce(verdicts, op: .max)
            for (p, bad) in zip(plans, combined) {
                if bad == 0 { passed += 1 } else {
                    failed += 1
                    if comm.rank == 0 { print("FAIL op \(p.index): \(p.description), seed \(seed) (rerun: --fuzz-op \(p.index) --seed \(seed))") }
                }
            }
            next += batch
            if comm.rank == 0, only == nil, next / 1000 != (next - batch) / 1000 {
                print("\(next)/\(ops) ops, \(failed) failed, \(String(format: "%.1f", Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)) s")
            }
        }
        if comm.rank == 0 {
            print(String(format: "fuzz: %.1f s", Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9))
            print("\(passed) passed, \(failed) failed")
        }
        return failed
    }

    // MARK: the group pool

    /// The world, the world in a shuffled order, and random subsets (random sizes, random member order): 13 slots.
    private func makePool() throws {
        let n = comm.worldSize
        var rng = SplitMix(seed: mix(seed, 0x9001, 0))
        var sets: [[Int]] = [Array(0..<n), shuffled(Array(0..<n), &rng)]
        for _ in 0..<11 {
            let size = 1 + Int(rng.next() % UInt64(n))
            sets.append(Array(shuffled(Array(0..<n), &rng).prefix(size)))
        }
        for members in sets {
            let group = members == Array(0..<n) ? comm.world : try comm.newGroup(ranks: members)
            pool.append((members, group))
        }
    }

    private func shuffled(_ a: [Int], _ rng: inout SplitMix) -> [Int] {
        var a = a
        for i in stride(from: a.count - 1, to: 0, by: -1) { a.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        return a
    }

    // MARK: one op

    enum Kind: String, CaseIterable { case allGather = "all_gather", allGatherV = "all_gather_v", reduceScatter = "reduce_scatter",
                                      reduceScatterV = "reduce_scatter_v", allReduce = "all_reduce", allToAll = "all_to_all_v",
                                      allToAllRows = "all_to_all_rows", broadcast, barrier }
    enum DType: String, CaseIterable { case float32, float64, int32, int64, bfloat16, uint8 }

    struct Plan {
        let index: Int
        let groupIndex: Int
        let members: [Int]
        let kind: Kind
        let dtype: DType
        let op: ReduceOp
        let algorithm: CollectiveAlgorithm
        /// Per member: all-gather(-v) contributions, reduce-scatter chunks; [count] for all-reduce and broadcast.
        let counts: [Int]
        /// all-to-all-v: splits[i][j] elements (rows for all_to_all_rows) from member i to member j.
        let splits: [[Int]]
        /// all_to_all_rows: elements per row.
        let rowLength: Int
        let root: Int

        var description: String {
            var s = "\(kind.rawValue) \(dtype.rawValue)"
            if [.reduceScatter, .reduceScatterV, .allReduce].contains(kind) { s += " \(op.rawValue)" }
            s += ", group \(groupIndex) \(members), \(algorithm.rawValue)"
            switch kind {
            case .allToAll: s += ", splits \(splits)"
            case .allToAllRows: s += ", rows of \(rowLength), row splits \(splits)"
            case .broadcast: s += ", root \(root), count \(counts[0])"
            case .barrier: break
            default: s += ", counts \(counts)"
            }
            return s
        }
    }

    /// Op `index`'s plan, from the seed and the index only.
    func plan(_ index: Int) -> Plan {
        var rng = SplitMix(seed: mix(seed, 0x0F, UInt64(index)))
        let groupIndex = Int(rng.next() % UInt64(max(pool.count, 1)))
        let members = pool[groupIndex].members, n = members.count
        let kind = Kind.allCases[Int(rng.next() % UInt64(Kind.allCases.count))]
        let movesOnly: Set<Kind> = [.allGather, .allGatherV, .allToAll, .allToAllRows, .broadcast, .barrier]
        let types = movesOnly.contains(kind) ? DType.allCases : DType.allCases.filter { $0 != .uint8 }
        let dtype = types[Int(rng.next() % UInt64(types.count))]
        let ops: [ReduceOp] = dtype == .float32 || dtype == .float64 ? [.sum, .avg, .max] : [.sum, .max]
        let op = ops[Int(rng.next() % UInt64(ops.count))]
        let drawn: CollectiveAlgorithm = rng.next() % 2 == 0 ? .ring : .hierarchical
        let algorithm = chosen == .auto ? drawn : chosen
        let elementSize = Self.size(of: dtype)
        // The whole buffer's element budget: empty, one, small odd counts, and now and then up to maxBytes.
        func total() -> Int {
            let r = rng.next() % 100
            let limit = r < 8 ? 0 : r < 16 ? 1 : r < 50 ? 64 : r < 80 ? 4096 : r < 97 ? 65536 : maxBytes / elementSize
            return limit <= 1 ? limit : Int(rng.next() % UInt64(limit + 1))
        }
        /// `budget` elements over `parts` parts: even, or random with zeros, or skewed onto one part.
        func split(_ budget: Int, _ parts: Int) -> [Int] {
            switch rng.next() % 3 {
            case 0: return (0..<parts).map { budget / parts + ($0 < budget % parts ? 1 : 0) }
            case 1: return (0..<parts).map { _ in rng.next() % 3 == 0 ? 0 : Int(rng.next() % UInt64(budget / max(parts, 1) * 2 + 1)) }
            default:
                let heavy = Int(rng.next() % UInt64(parts))
                return (0..<parts).map { $0 == heavy ? budget : Int(rng.next() % 3) }
            }
        }
        var counts: [Int] = [], splits: [[Int]] = [], root = 0, rowLength = 0
        switch kind {
        case .allGather, .reduceScatter: counts = Array(repeating: total() / max(n, 1), count: n)
        case .allGatherV, .reduceScatterV: counts = split(total(), n)
        case .allReduce: counts = [total()]
        case .broadcast: counts = [total()]; root = Int(rng.next() % UInt64(n))
        case .allToAll: splits = (0..<n).map { _ in split(total() / max(n, 1), n) }
        case .allToAllRows:
            rowLength = 1 + Int(rng.next() % 32)
            splits = (0..<n).map { _ in split(total() / max(n * rowLength, 1), n) }
        case .barrier: break
        }
        return Plan(index: index, groupIndex: groupIndex, members: members, kind: kind, dtype: dtype, op: op,
                    algorithm: algorithm, counts: counts, splits: splits, rowLength: rowLength, root: root)
    }

    static func size(of dtype: DType) -> Int {
        switch dtype {
        case .float32, .int32: return 4
        case .float64, .int64: return 8
        case .bfloat16: return 2
        case .uint8: return 1
        }
    }

    /// Submits the op on this rank (nothing when it is not a member); the returned check waits for it and returns ""
    /// or what is wrong.
    private func submit(_ p: Plan) throws -> () -> String {
        comm.setAlgorithm(p.algorithm)   // on every rank: the verdicts' all-reduce resets it everywhere
        guard let g = pool[p.groupIndex].group else { return { "" } }
        switch p.dtype {
        case .float32: return try submit(p, g, Float.self)
        case .float64: return try submit(p, g, Double.self)
        case .int32: return try submit(p, g, Int32.self)
        case .int64: return try submit(p, g, Int64.self)
        case .bfloat16: return try submit(p, g, BFloat16.self)
        case .uint8: return try submit(p, g, UInt8.self)
        }
    }

    private func submit<T: FuzzElement>(_ p: Plan, _ g: ProcessGroup, _: T.Type) throws -> () -> String {
        let n = g.size, me = g.rank
        // The values behind `key` (a member's input; an all-to-all block: 1 << 32 | i << 16 | j), from the seed and op.
        func values(_ key: Int, _ count: Int) -> [T] {
            (0..<count).map { T.fuzzValue(mix(seed, UInt64(p.index) << 40 | UInt64(key), UInt64($0))) }
        }
        func block(_ i: Int, _ j: Int) -> [T] { values(1 << 32 | i << 16 | j, p.splits[i][j]) }
        // all_to_all_rows: member i's rows carry keys from a small range (so a remote host often needs a row more than
        // once), and a row's values follow from (i, key) alone.
        func rowKeys(_ i: Int) -> [Int32] {
            let rows = p.splits[i].reduce(0, +)
            return (0..<rows).map { Int32(truncatingIfNeeded: mix(seed, UInt64(p.index) << 40 | 3 << 32 | UInt64(i), UInt64($0)) % UInt64(rows / 2 + 1)) }
        }
        func rows(_ i: Int, _ j: Int) -> [T] {
            let keys = rowKeys(i), first = p.splits[i][..<j].reduce(0, +)
            return keys[first..<(first + p.splits[i][j])].flatMap { values(2 << 32 | i << 16 | Int($0), p.rowLength) }
        }
        // The collective reads `input` and writes `output` until its Work completes; both live until the check ran.
        var inputs: [T] = [], expected: [T] = [], outputCount = 0
        switch p.kind {
        case .allGather, .allGatherV:
            inputs = values(me, p.counts[me])
            outputCount = p.counts.reduce(0, +)
            expected = (0..<n).flatMap { values($0, p.counts[$0]) }
        case .reduceScatter, .reduceScatterV:
            let layout = ChunkLayout(sizes: p.counts)
            inputs = values(me, layout.total)
            outputCount = p.counts[me]
            expected = reduce((0..<n).map { values($0, layout.total) }, chunk: layout.range(me), owner: me, g, p)
        case .allReduce:
            inputs = values(me, p.counts[0])
            outputCount = p.counts[0]
            let layout = ChunkLayout.even(count: p.counts[0], parts: n, elementSize: 1)
            let all = (0..<n).map { values($0, p.counts[0]) }
            expected = (0..<n).flatMap { reduce(all, chunk: layout.range($0), owner: $0, g, p) }
        case .allToAll:
            inputs = (0..<n).flatMap { block(me, $0) }
            outputCount = (0..<n).map { p.splits[$0][me] }.reduce(0, +)
            expected = (0..<n).flatMap { block($0, me) }
        case .allToAllRows:
            inputs = (0..<n).flatMap { rows(me, $0) }
            outputCount = (0..<n).map { p.splits[$0][me] }.reduce(0, +) * p.rowLength
            expected = (0..<n).flatMap { rows($0, me) }
        case .broadcast:
            inputs = me == p.root ? values(me, p.counts[0]) : values(n, p.counts[0])   // a non-root starts with other bits
            outputCount = p.counts[0]
            expected = values(p.root, p.counts[0])
        case .barrier:
            break
        }
        let input = UnsafeMutableBufferPointer<T>.allocate(capacity: inputs.count)
        _ = input.initialize(from: inputs)
        let output = UnsafeMutableBufferPointer<T>.allocate(capacity: outputCount)
        let keys = UnsafeMutableBufferPointer<Int32>.allocate(capacity: p.kind == .allToAllRows ? p.splits[me].reduce(0, +) : 0)
        if p.kind == .allToAllRows { _ = keys.initialize(from: rowKeys(me)) }
        let work: Work
        do {
            switch p.kind {
            case .allGather, .allGatherV: work = try g.allGatherAsync(UnsafeBufferPointer(input), counts: p.counts, into: output)
            case .reduceScatter, .reduceScatterV:
                work = try g.reduceScatterAsync(UnsafeBufferPointer(input), counts: p.counts, into: output, op: p.op)
            case .allReduce: work = try g.allReduceAsync(input, op: p.op)
            case .allToAll:
                work = try g.allToAllAsync(UnsafeBufferPointer(input), sendCounts: p.splits[me], into: output,
                                           receiveCounts: (0..<n).map { p.splits[$0][me] })
            case .allToAllRows:
                work = try g.allToAllRowsAsync(UnsafeBufferPointer(input), rowLength: p.rowLength, sendRows: p.splits[me],
                                               rowKeys: UnsafeBufferPointer(keys), into: output,
                                               receiveRows: (0..<n).map { p.splits[$0][me] })
            case .broadcast: work = try g.broadcastAsync(input, root: p.root)
            case .barrier: work = g.barrierAsync()
            }
        } catch {
            input.deallocate(); output.deallocate(); keys.deallocate()
            throw error
        }
        let inPlace = p.kind == .allReduce || p.kind == .broadcast
        return {
            defer { input.deallocate(); output.deallocate(); keys.deallocate() }
            do { try work.wait() } catch { return "\(error)" }
            return Self.firstMismatch(Array(inPlace ? input : output), expected)
        }
    }

    /// Chunk `chunk` of the reduction of `all` (one input per member), folded in the order the plan's algorithm
    /// promises for the chunk owned by `owner`.
    private func reduce<T: FuzzElement>(_ all: [[T]], chunk: Range<Int>, owner: Int, _ g: ProcessGroup, _ p: Plan) -> [T] {
        let n = all.count
        func fold(_ parts: [[T]]) -> [T] {
            var acc = parts[0]
            for part in parts.dropFirst() {
                acc.withUnsafeMutableBufferPointer { a in
                    part.withUnsafeBufferPointer { b in
                        if let ap = a.baseAddress, let bp = b.baseAddress { T.combine(p.op, ap, ap, bp, count: a.count) }
                    }
                }
            }
            return acc
        }
        let chunks = all.map { Array($0[chunk]) }
        var result: [T]
        if p.algorithm == .hierarchical {
            let hosts = HostLayout(hostIndex: g.members.map { comm.spec.hostIndex(ofRank: $0) })
            result = fold(hosts.hosts.map { host in fold(host.map { chunks[$0] }) })
        } else {
            result = fold((1...n).map { chunks[(owner + $0) % n] })
        }
        if p.op == .avg { result.withUnsafeMutableBufferPointer { if let b = $0.baseAddress { T.divide(b, count: $0.count, by: n) } } }
        return result
    }

    private static func firstMismatch<T: FuzzElement>(_ got: [T], _ want: [T]) -> String {
        guard got.count == want.count else { return "length \(got.count), expected \(want.count)" }
        for i in 0..<got.count where !got[i].sameBits(want[i]) { return "element \(i): \(got[i]), expected \(want[i])" }
        return ""
    }
}

/// A 64-bit mix of three words (SplitMix64's finalizer over a combination): the fuzzer's every random choice.
func mix(_ a: UInt64, _ b: UInt64, _ c: UInt64) -> UInt64 {
    var z = a &* 0x9E37_79B9_7F4A_7C15 ^ (b &+ 0x632B_E59B_D9B4_E019) &* 0xBF58_476D_1CE4_E5B9 ^ c &* 0x94D0_49BB_1331_11EB
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// An element type the fuzzer draws values of and compares bit for bit.
protocol FuzzElement: CollectiveElement {
    /// A value from 64 random bits: floats with mantissas and exponents that make sums round (so the fold order
    /// matters), integers small enough that sums of 64 never overflow.
    static func fuzzValue(_ bits: UInt64) -> Self
    func sameBits(_ other: Self) -> Bool
}

extension FuzzElement where Self: BinaryFloatingPoint {
    static func fuzzValue(_ bits: UInt64) -> Self {
        let mantissa = Self(Int64(bits >> 11) - (1 << 52))   // 53 bits, signed (rounded to the type's)
        return mantissa * Self(sign: .plus, exponent: Exponent((bits & 0x7FF) % 24) - 60, significand: 1)
    }
}

extension FuzzElement where Self: FixedWidthInteger {
    func sameBits(_ other: Self) -> Bool { self == other }
}

extension Float: FuzzElement { func sameBits(_ other: Float) -> Bool { bitPattern == other.bitPattern } }
extension Double: FuzzElement { func sameBits(_ other: Double) -> Bool { bitPattern == other.bitPattern } }
extension Int32: FuzzElement { static func fuzzValue(_ bits: UInt64) -> Int32 { Int32(truncatingIfNeeded: bits >> 32) >> 12 } }
extension Int64: FuzzElement { static func fuzzValue(_ bits: UInt64) -> Int64 { Int64(bitPattern: bits) >> 8 } }
extension UInt8: FuzzElement { static func fuzzValue(_ bits: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: bits >> 33) } }
extension BFloat16: FuzzElement, CustomStringConvertible {
    static func fuzzValue(_ bits: UInt64) -> BFloat16 { BFloat16(Float.fuzzValue(bits)) }
    func sameBits(_ other: BFloat16) -> Bool { self.bits == other.bits }
    public var description: String { "\(float)" }
}
