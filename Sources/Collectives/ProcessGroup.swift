import Foundation
import Runtime

/// A set of ranks that run collectives together (torch's ProcessGroup). Created collectively through
/// a `Communicator`; each group has its own sockets and worker thread.
///
/// Every collective exists in two forms: `xxxAsync` returns a `Work` at once (the buffers must stay
/// alive until `wait()`), and `xxx` waits. All members must issue the same collectives in the same order.
public final class ProcessGroup: @unchecked Sendable {
    /// Global ranks of the members, in group order.
    public let members: [Int]
    /// This rank's index in `members`.
    public let rank: Int
    public var size: Int { members.count }
    /// The group's number, equal on every member (its creation order).
    public let slot: Int
    /// The deadline of the collectives that begin from now on (the communicator's, changed by `setTimeout`).
    public var timeoutSeconds: Double { settings.timeoutSeconds }
    /// How many hosts the members run on (the topology's `[[hosts]]`).
    public var hostCount: Int { hosts.hosts.count }
    /// The algorithm family the next collective submitted will run (the communicator's choice, `auto` resolved for
    /// this group).
    public var algorithm: CollectiveAlgorithm { settings.algorithm.resolved(hosts: hostCount) }

    private let worker: GroupWorker
    private var channel: ZMQChannel?
    private var broken: Error?         // touched only on the worker thread
    private let lock = NSLock()
    private var nextSequence: UInt64 = 0
    private let settings: GroupSettings
    private let recorder: FlightRecorder
    private let hosts: HostLayout

    init(spec: ClusterSpec, context: ZMQContext, members: [Int], rank: Int, slot: Int, traffic: TrafficCounter,
         settings: GroupSettings, recorder: FlightRecorder, security: ChannelSecurity? = nil, shaper: LinkShaper? = nil) {
        self.members = members
        self.rank = rank
        self.slot = slot
        self.settings = settings
        self.recorder = recorder
        hosts = HostLayout(hostIndex: members.map { spec.hostIndex(ofRank: $0) })
        worker = GroupWorker(name: "titan-group\(slot)-rank\(members[rank])")
        worker.submit { [self] in
            do { channel = try ZMQChannel(spec: spec, context: context, members: members, me: rank, slot: slot, traffic: traffic,
                                          security: security, shaper: shaper) }
            catch { broken = error }
        }
    }

    /// Closes the sockets and ends the worker thread (after the queued collectives ran).
    func close() {
        worker.submit { [self] in channel?.close(); channel = nil; broken = CollectiveError.groupClosed("group \(slot) was closed") }
        worker.stop(waitSeconds: timeoutSeconds + 5)
    }

    public var description: String { "group \(slot) \(members)" }

    /// Queues `body` on the group's worker with the next sequence number; a failure poisons the group,
    /// since its members no longer agree on where they are. The flight recorder sees it scheduled here, started
    /// and ended on the worker (before `Work` reports the end, so a returned `wait()` finds it recorded).
    private func submit(_ kind: CollectiveKind, inputBytes: Int, outputBytes: Int,
                        _ body: @escaping (ZMQChannel) throws -> Void) -> Work {
        lock.lock()
        nextSequence += 1
        let sequence = nextSequence
        let record = recorder.scheduled(kind, slot: slot, sequence: sequence, inputBytes: inputBytes, outputBytes: outputBytes)
        lock.unlock()
        let me = members[rank]
        let work = Work(rank: me)
        worker.submit { [self] in
            func fail(_ error: Error) {
                recorder.ended(record, error: error)
                work.finish(error)
            }
            if let broken { fail(broken); return }
            guard let channel else { fail(CollectiveError.groupClosed("group \(slot) has no channel")); return }
            let delay = settings.delaySeconds
            if delay > 0 { Thread.sleep(forTimeInterval: delay) }
            // Read once per collective: a new timeout applies from the next collective that begins.
            let timeout = settings.timeoutSeconds
            work.markStarted(limitSeconds: timeout * 2 + 30)
            recorder.started(record)
            channel.begin(kind, sequence: sequence, timeoutSeconds: timeout)
            do {
                let start = Runtime.now()
                try body(channel)
                try channel.waitForSends()
                Runtime.collectiveRan(kind.name, rank: me, group: slot, sequence: Int(sequence), bytesSent: channel.bytesSent, start: start)
                recorder.ended(record, error: nil)
                work.finish(nil)
            } catch {
                channel.abort()
                self.channel = nil
                broken = error
                fail(error)
            }
        }
        return work
    }

    private func info(_ kind: CollectiveKind) -> CollectiveContextInfo {
        CollectiveContextInfo(rank: members[rank], kind: kind, sequence: nextSequence + 1, groupSlot: slot, groupMembers: members)
    }

    private func check(_ condition: Bool, _ kind: CollectiveKind, _ message: @autoclosure () -> String) throws {
        if !condition { throw CollectiveError.invalidArgument(info(kind), message()) }
    }

    // MARK: all-gather

    /// Every member contributes `input` (same length everywhere); `output` (size × input.count)
    /// receives the contributions in member order.
    public func allGatherAsync<T: CollectiveElement>(_ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>) throws -> Work {
        try allGatherAsync(input, counts: Array(repeating: input.count, count: size), into: output)
    }

    /// All-gather with uneven contributions: member i contributes `counts[i]` elements.
    public func allGatherAsync<T: CollectiveElement>(_ input: UnsafeBufferPointer<T>, counts: [Int], into output: UnsafeMutableBufferPointer<T>) throws -> Work {
        let es = MemoryLayout<T>.stride
        try check(counts.count == size, .allGather, "counts has \(counts.count) entries for \(size) members")
        try check(input.count == counts[rank], .allGather, "input has \(input.count) elements, counts[\(rank)] = \(counts[rank])")
        try check(output.count == counts.reduce(0, +), .allGather, "output has \(output.count) elements, counts sum to \(counts.reduce(0, +))")
        let layout = ChunkLayout(sizes: counts.map { $0 * es })
        let out = UnsafeMutableRawPointer(output.baseAddress) ?? Self.emptyBuffer
        let own = UnsafeRawPointer(input.baseAddress)
        let me = rank, hierarchical = algorithm == .hierarchical, hosts = hosts
        return submit(.allGather, inputBytes: layout.sizes[me], outputBytes: output.count * es) { ch in
            if let own, layout.sizes[me] > 0, own != UnsafeRawPointer(out + layout.offsets[me]) {
                memmove(out + layout.offsets[me], own, layout.sizes[me])
            }
            if hierarchical { try hierarchicalAllGather(ch, output: out, layout: layout, hosts: hosts, elementSize: es) }
            else { try ringAllGather(ch, output: out, layout: layout, elementSize: es) }
        }
    }

    // MARK: reduce-scatter

    /// `input` holds size equal chunks; member i receives the reduction of every member's chunk i.
    public func reduceScatterAsync<T: CollectiveElement>(_ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum) throws -> Work {
        try reduceScatterAsync(input, counts: Array(repeating: output.count, count: size), into: output, op: op)
    }

    /// Reduce-scatter with uneven chunks: chunk i has `counts[i]` elements.
    public func reduceScatterAsync<T: CollectiveElement>(_ input: UnsafeBufferPointer<T>, counts: [Int], into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum) throws -> Work {
        let es = MemoryLayout<T>.stride
        try check(T.isReducible, .reduceScatter, "\(T.self) cannot be reduced")
        try check(op != .avg || T.self == Float.self || T.self == Double.self, .reduceScatter, "avg needs floating-point data")
        try check(counts.count == size, .reduceScatter, "counts has \(counts.count) entries for \(size) members")
        try check(input.count == counts.reduce(0, +), .reduceScatter, "input has \(input.count) elements, counts sum to \(counts.reduce(0, +))")
        try check(output.count == counts[rank], .reduceScatter, "output has \(output.count) elements, counts[\(rank)] = \(counts[rank])")
        let layout = ChunkLayout(sizes: counts.map { $0 * es })
        let src = UnsafeRawPointer(input.baseAddress) ?? UnsafeRawPointer(Self.emptyBuffer)
        let dst = UnsafeMutableRawPointer(output.baseAddress) ?? Self.emptyBuffer
        let n = size, count = output.count, hierarchical = algorithm == .hierarchical, hosts = hosts
        return submit(.reduceScatter, inputBytes: input.count * es, outputBytes: count * es) { ch in
            let reduction = ByteReduction(T.self, op)
            if hierarchical {
                try hierarchicalReduceScatter(ch, input: src, output: dst, layout: layout, hosts: hosts, reduction: reduction)
            } else {
                try ringReduceScatter(ch, input: src, output: dst, layout: layout, reduction: reduction)
            }
            if op == .avg { T.divide(dst.assumingMemoryBound(to: T.self), count: count, by: n) }
        }
    }

    // MARK: all-reduce

    /// In-place all-reduce of `buffer` (same length on every member).
    public func allReduceAsync<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum) throws -> Work {
        try check(T.isReducible, .allReduce, "\(T.self) cannot be reduced")
        try check(op != .avg || T.self == Float.self || T.self == Double.self, .allReduce, "avg needs floating-point data")
        let base = UnsafeMutableRawPointer(buffer.baseAddress) ?? Self.emptyBuffer
        let count = buffer.count, n = size, hierarchical = algorithm == .hierarchical, hosts = hosts
        let byteCount = count * MemoryLayout<T>.stride
        return submit(.allReduce, inputBytes: byteCount, outputBytes: byteCount) { ch in
            let finish: (UnsafeMutableRawPointer, Int) -> Void = { chunk, bytes in
                if op == .avg { T.divide(chunk.assumingMemoryBound(to: T.self), count: bytes / MemoryLayout<T>.stride, by: n) }
            }
            if hierarchical {
                try hierarchicalAllReduce(ch, buffer: base, count: count, hosts: hosts, reduction: ByteReduction(T.self, op), finish: finish)
            } else {
                try ringAllReduce(ch, buffer: base, count: count, reduction: ByteReduction(T.self, op), finish: finish)
            }
        }
    }

    // MARK: all-to-all

    /// All-to-all-v (torch's all_to_all_single with split sizes): `send` holds `sendCounts[j]` elements
    /// for member j, in member order; `receive` gets `receiveCounts[i]` elements from member i.
    public func allToAllAsync<T: CollectiveElement>(_ send: UnsafeBufferPointer<T>, sendCounts: [Int],
                                                    into receive: UnsafeMutableBufferPointer<T>, receiveCounts: [Int]) throws -> Work {
        let es = MemoryLayout<T>.stride
        try check(sendCounts.count == size && receiveCounts.count == size, .allToAll, "split lists need \(size) entries")
        try check(send.count == sendCounts.reduce(0, +), .allToAll, "send has \(send.count) elements, sendCounts sum to \(sendCounts.reduce(0, +))")
        try check(receive.count == receiveCounts.reduce(0, +), .allToAll, "receive has \(receive.count) elements, receiveCounts sum to \(receiveCounts.reduce(0, +))")
        try check(sendCounts[rank] == receiveCounts[rank], .allToAll, "sendCounts[\(rank)] != receiveCounts[\(rank)] for the rank's own split")
        let sendLayout = ChunkLayout(sizes: sendCounts.map { $0 * es })
        let receiveLayout = ChunkLayout(sizes: receiveCounts.map { $0 * es })
        let src = UnsafeRawPointer(send.baseAddress) ?? UnsafeRawPointer(Self.emptyBuffer)
        let dst = UnsafeMutableRawPointer(receive.baseAddress) ?? Self.emptyBuffer
        let hierarchical = algorithm == .hierarchical, hosts = hosts
        return submit(.allToAll, inputBytes: send.count * es, outputBytes: receive.count * es) { ch in
            if hierarchical {
                try hierarchicalAllToAll(ch, send: src, sendLayout: sendLayout, receive: dst, receiveLayout: receiveLayout,
                                         hosts: hosts, elementSize: es)
            } else {
                try pairwiseAllToAll(ch, send: src, sendLayout: sendLayout, receive: dst, receiveLayout: receiveLayout, elementSize: es)
            }
        }
    }

    /// All-to-all-v of rows of `rowLength` elements: `sendRows[j]` rows to member j (in member order in `send`),
    /// `receiveRows[i]` rows from member i; rows with equal `rowKeys` must hold equal data (a token routed to several
    /// experts: the expert-parallel dispatch). The result is `allToAllAsync`'s with the row counts × `rowLength`, bit for
    /// bit. Under the hierarchical algorithm each distinct row travels once per remote host, with an index list per
    /// member, and the host's gateway rebuilds the blocks (DeepEP's node-level dispatch); the flat one sends every row.
    /// `rowKeys` (one per sent row) must stay alive until the work completes, like the buffers.
    public func allToAllRowsAsync<T: CollectiveElement>(_ send: UnsafeBufferPointer<T>, rowLength: Int, sendRows: [Int],
                                                        rowKeys: UnsafeBufferPointer<Int32>,
                                                        into receive: UnsafeMutableBufferPointer<T>, receiveRows: [Int]) throws -> Work {
        guard algorithm == .hierarchical else {
            return try allToAllAsync(send, sendCounts: sendRows.map { $0 * rowLength }, into: receive,
                                     receiveCounts: receiveRows.map { $0 * rowLength })
        }
        let es = MemoryLayout<T>.stride
        try check(rowLength >= 0 && sendRows.count == size && receiveRows.count == size, .allToAll, "split lists need \(size) entries")
        try check(send.count == sendRows.reduce(0, +) * rowLength, .allToAll, "send has \(send.count) elements, sendRows × rowLength is \(sendRows.reduce(0, +) * rowLength)")
        try check(rowKeys.count == sendRows.reduce(0, +), .allToAll, "rowKeys has \(rowKeys.count) entries for \(sendRows.reduce(0, +)) rows")
        try check(receive.count == receiveRows.reduce(0, +) * rowLength, .allToAll, "receive has \(receive.count) elements, receiveRows × rowLength is \(receiveRows.reduce(0, +) * rowLength)")
        try check(sendRows[rank] == receiveRows[rank], .allToAll, "sendRows[\(rank)] != receiveRows[\(rank)] for the rank's own split")
        let src = UnsafeRawPointer(send.baseAddress) ?? UnsafeRawPointer(Self.emptyBuffer)
        let dst = UnsafeMutableRawPointer(receive.baseAddress) ?? Self.emptyBuffer
        let keys = rowKeys.baseAddress ?? UnsafePointer(Self.emptyBuffer.assumingMemoryBound(to: Int32.self))
        let hosts = hosts
        return submit(.allToAll, inputBytes: send.count * es, outputBytes: receive.count * es) { ch in
            try hierarchicalRowAllToAll(ch, send: src, rowBytes: rowLength * es, sendRows: sendRows, keys: keys, receive: dst,
                                        receiveRows: receiveRows, hosts: hosts, elementSize: es)
        }
    }

    // MARK: broadcast, barrier

    public func broadcastAsync<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws -> Work {
        try check((0..<size).contains(root), .broadcast, "root \(root) is not a group rank (0..<\(size))")
        let base = UnsafeMutableRawPointer(buffer.baseAddress) ?? Self.emptyBuffer
        let bytes = buffer.count * MemoryLayout<T>.stride
        return submit(.broadcast, inputBytes: bytes, outputBytes: bytes) { ch in
            try chainBroadcast(ch, buffer: base, bytes: bytes, root: root, elementSize: MemoryLayout<T>.stride)
        }
    }

    public func barrierAsync() -> Work {
        submit(.barrier, inputBytes: 0, outputBytes: 0) { ch in try disseminationBarrier(ch) }
    }

    /// `ringPass` of `bytes` (see Algorithms/RingPass.swift); for the benchmark.
    func ringPass(_ bytes: UnsafeRawBufferPointer, repeats: Int) throws {
        let base = bytes.baseAddress ?? UnsafeRawPointer(Self.emptyBuffer)
        try submit(.ringPass, inputBytes: bytes.count, outputBytes: bytes.count) { ch in
            try Collectives.ringPass(ch, bytes: base, count: bytes.count, repeats: repeats)
        }.wait()
    }

    /// A stand-in address for empty buffers (nothing is ever read from or written to it).
    private static let emptyBuffer = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
}

// MARK: - Blocking forms and array conveniences

extension ProcessGroup {
    public func allGather<T: CollectiveElement>(_ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>) throws {
        try allGatherAsync(input, into: output).wait()
    }

    public func allGather<T: CollectiveElement>(_ input: UnsafeBufferPointer<T>, counts: [Int], into output: UnsafeMutableBufferPointer<T>) throws {
        try allGatherAsync(input, counts: counts, into: output).wait()
    }

    public func reduceScatter<T: CollectiveElement>(_ input: UnsafeBufferPointer<T>, into output: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum) throws {
        try reduceScatterAsync(input, into: output, op: op).wait()
    }

    public func allReduce<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, op: ReduceOp = .sum) throws {
        try allReduceAsync(buffer, op: op).wait()
    }

    public func allToAll<T: CollectiveElement>(_ send: UnsafeBufferPointer<T>, sendCounts: [Int],
                                               into receive: UnsafeMutableBufferPointer<T>, receiveCounts: [Int]) throws {
        try allToAllAsync(send, sendCounts: sendCounts, into: receive, receiveCounts: receiveCounts).wait()
    }

    public func allToAllRows<T: CollectiveElement>(_ send: UnsafeBufferPointer<T>, rowLength: Int, sendRows: [Int],
                                                   rowKeys: UnsafeBufferPointer<Int32>,
                                                   into receive: UnsafeMutableBufferPointer<T>, receiveRows: [Int]) throws {
        try allToAllRowsAsync(send, rowLength: rowLength, sendRows: sendRows, rowKeys: rowKeys, into: receive,
                              receiveRows: receiveRows).wait()
    }

    public func broadcast<T: CollectiveElement>(_ buffer: UnsafeMutableBufferPointer<T>, root: Int) throws {
        try broadcastAsync(buffer, root: root).wait()
    }

    public func barrier() throws { try barrierAsync().wait() }

    /// All-reduce of an array, returning the result.
    public func allReduce<T: CollectiveElement>(_ values: [T], op: ReduceOp = .sum) throws -> [T] {
        var v = values
        try v.withUnsafeMutableBufferPointer { try allReduce($0, op: op) }
        return v
    }

    /// All-gather of arrays of any (per-member) length; returns each member's array.
    public func allGatherVariable<T: CollectiveElement>(_ values: [T]) throws -> [[T]] {
        let counts = try allGather([Int64(values.count)]).map { Int($0) }
        var out = [T](unsafeUninitializedCapacity: counts.reduce(0, +)) { buf, n in
            n = counts.reduce(0, +)
            if let p = buf.baseAddress { memset(p, 0, n * MemoryLayout<T>.stride) }
        }
        try values.withUnsafeBufferPointer { src in
            try out.withUnsafeMutableBufferPointer { dst in try allGather(src, counts: counts, into: dst) }
        }
        var result: [[T]] = []
        var o = 0
        for c in counts { result.append(Array(out[o..<(o + c)])); o += c }
        return result
    }

    /// All-gather of equal-length arrays, concatenated in member order.
    public func allGather<T: CollectiveElement>(_ values: [T]) throws -> [T] {
        var out = [T](unsafeUninitializedCapacity: values.count * size) { buf, n in
            n = values.count * size
            if let p = buf.baseAddress { memset(p, 0, n * MemoryLayout<T>.stride) }
        }
        try values.withUnsafeBufferPointer { src in
            try out.withUnsafeMutableBufferPointer { dst in try allGather(src, into: dst) }
        }
        return out
    }

    /// All-gather of small byte blobs (metadata), one per member.
    public func allGatherBytes(_ blob: [UInt8]) throws -> [[UInt8]] {
        try allGatherVariable(blob)
    }
}
