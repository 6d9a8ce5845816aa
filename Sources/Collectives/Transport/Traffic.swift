import Foundation

/// What one rank's transport carried, per collective kind: payload bytes and messages sent and received. Each message
/// also carries one `FrameHeader.size`-byte header frame, not counted in `bytes`. Snapshots subtract, so a caller
/// measures a window (a training step, one collective) as `after - before`.
public struct Traffic: Sendable, Equatable {
    public struct Count: Sendable, Equatable {
        public var bytes = 0
        public var messages = 0
        public init(bytes: Int = 0, messages: Int = 0) { self.bytes = bytes; self.messages = messages }
    }

    public fileprivate(set) var sent: [CollectiveKind: Count] = [:]
    public fileprivate(set) var received: [CollectiveKind: Count] = [:]
    /// The part of `sent` that went to ranks on another host of the topology.
    public fileprivate(set) var sentInterHost: [CollectiveKind: Count] = [:]

    public init() {}

    public func sent(_ kind: CollectiveKind) -> Count { sent[kind] ?? Count() }
    public func received(_ kind: CollectiveKind) -> Count { received[kind] ?? Count() }
    public func sentInterHost(_ kind: CollectiveKind) -> Count { sentInterHost[kind] ?? Count() }

    public var totalSent: Count { Self.total(sent) }
    public var totalSentInterHost: Count { Self.total(sentInterHost) }

    private static func total(_ counts: [CollectiveKind: Count]) -> Count {
        counts.values.reduce(Count()) { Count(bytes: $0.bytes + $1.bytes, messages: $0.messages + $1.messages) }
    }

    public static func - (after: Traffic, before: Traffic) -> Traffic {
        func difference(_ a: [CollectiveKind: Count], _ b: [CollectiveKind: Count]) -> [CollectiveKind: Count] {
            a.merging(b.mapValues { Count(bytes: -$0.bytes, messages: -$0.messages) }) {
                Count(bytes: $0.bytes + $1.bytes, messages: $0.messages + $1.messages)
            }.filter { $0.value != Count() }
        }
        var d = Traffic()
        d.sent = difference(after.sent, before.sent)
        d.received = difference(after.received, before.received)
        d.sentInterHost = difference(after.sentInterHost, before.sentInterHost)
        return d
    }
}

/// The running totals of one rank (every group's worker thread adds to them; any thread may read a snapshot).
final class TrafficCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var totals = Traffic()

    func sent(_ kind: CollectiveKind, bytes: Int, interHost: Bool) {
        lock.lock()
        totals.sent[kind, default: Traffic.Count()].bytes += bytes
        totals.sent[kind, default: Traffic.Count()].messages += 1
        if interHost {
            totals.sentInterHost[kind, default: Traffic.Count()].bytes += bytes
            totals.sentInterHost[kind, default: Traffic.Count()].messages += 1
        }
        lock.unlock()
    }

    func received(_ kind: CollectiveKind, bytes: Int) {
        lock.lock()
        totals.received[kind, default: Traffic.Count()].bytes += bytes
        totals.received[kind, default: Traffic.Count()].messages += 1
        lock.unlock()
    }

    var snapshot: Traffic {
        lock.lock(); defer { lock.unlock() }
        return totals
    }
}
