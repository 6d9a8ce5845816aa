#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Chrome / Perfetto trace events ("X" complete events), off by default. Events go into one preallocated array
/// (a short critical section per event; nothing is allocated while recording); when it is full, further events
/// are counted and dropped. `pid` is the global rank; `tid` 0 is the training thread, `collectiveTrack(group)` a
/// process group's worker. Enabling it also records every collective wait and every collective (as an observer).
public enum Trace {
    /// What a span is of: a parameter or process group, or a training step.
    public enum SpanArg {
        case none, group(Int), step(Int)
    }

    public struct Event {
        public var name: StaticString
        public var arg: SpanArg
        /// Payload bytes a collective's span sent (-1: not a collective).
        public var bytesSent: Int64
        /// A collective's sequence number in its process group (-1: not a collective).
        public var sequence: Int64
        public var pid: Int32
        public var tid: Int32
        public var start: UInt64
        public var end: UInt64
    }

    public private(set) static var enabled = false
    private static var events = UnsafeMutablePointer<Event>.allocate(capacity: 1)
    private static var capacity = 0
    private static var count = 0
    public private(set) static var dropped = 0
    private static var lock = pthread_mutex_t()
    private static var threadNames: [Int32: [Int32: String]] = [:]   // pid -> tid -> name
    private static var groupMembers: [Int32: [Int32: [Int]]] = [:]   // pid -> tid -> a process group's members

    /// The track of a process group's worker thread.
    public static func collectiveTrack(group: Int) -> Int { 1 + group }

    private final class Observer: CollectiveObserver {
        func waitEnded(rank: Int, start: UInt64, end: UInt64) {
            Trace.record("wait", pid: rank, tid: 0, start: start, end: end)
        }
        func collectiveRan(_ name: StaticString, rank: Int, group: Int, sequence: Int, bytesSent: Int, start: UInt64, end: UInt64) {
            Trace.record(name, arg: .group(group), bytesSent: bytesSent, sequence: sequence, pid: rank,
                         tid: Trace.collectiveTrack(group: group), start: start, end: end)
        }
    }
    private static let observer = Observer()

    /// Starts recording into a buffer of `capacity` events (idempotent; keeps what was recorded).
    public static func enable(capacity n: Int = 1 << 18) {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        if enabled { return }
        events = UnsafeMutablePointer<Event>.allocate(capacity: n)
        capacity = n
        count = 0
        enabled = true
        Runtime.install(observer)
    }

    /// Records a span [start, end) in nanoseconds of `Runtime.now()`.
    @inline(__always)
    public static func record(_ name: StaticString, arg: SpanArg = .none, bytesSent: Int = -1, sequence: Int = -1, pid: Int, tid: Int,
                              start: UInt64, end: UInt64) {
        guard enabled else { return }
        pthread_mutex_lock(&lock)
        if count < capacity {
            events[count] = Event(name: name, arg: arg, bytesSent: Int64(bytesSent), sequence: Int64(sequence),
                                  pid: Int32(truncatingIfNeeded: pid), tid: Int32(truncatingIfNeeded: tid), start: start, end: end)
            count += 1
        } else {
            dropped += 1
        }
        pthread_mutex_unlock(&lock)
    }

    /// Names a thread of a rank in the trace (e.g. "train", "collectives: group 1 [0, 1, 2, 3]").
    /// `members`: a process group's worker's track lists the group's global ranks (in its thread_name's args), so a
    /// merge of the ranks' traces can match the spans of one collective.
    public static func nameThread(pid: Int, tid: Int, _ name: String, members: [Int]? = nil) {
        pthread_mutex_lock(&lock)
        defer { pthread_mutex_unlock(&lock) }
        threadNames[Int32(pid), default: [:]][Int32(tid)] = name
        if let members { groupMembers[Int32(pid), default: [:]][Int32(tid)] = members }
    }

    /// The Chrome trace format (microseconds; metadata events "M" name the tracks).
    private struct TraceFile: Encodable {
        struct Args: Encodable {
            var name: String?, sort_index: Int?, group: Int?, step: Int?, bytes_sent: Int?, seq: Int?, members: [Int]?
        }
        struct Event: Encodable {
            var name: String, ph: String, pid: Int, tid: Int
            var ts: Double?, dur: Double?
            var args: Args?
        }
        var displayTimeUnit = "ms"
        var traceEvents: [Event]
    }

    /// Writes the events of rank `pid` as Chrome trace JSON (`{"traceEvents": [...]}`). Codable: JSONSerialization
    /// took 11 s for a full buffer of 2^18 events here, JSONEncoder 1.4 s.
    public static func write(path: String, pid: Int) throws {
        pthread_mutex_lock(&lock)
        let n = count
        let names = threadNames[Int32(pid)] ?? [:]
        let members = groupMembers[Int32(pid)] ?? [:]
        pthread_mutex_unlock(&lock)
        typealias E = TraceFile.Event
        typealias A = TraceFile.Args
        var out = [E(name: "process_name", ph: "M", pid: pid, tid: 0, args: A(name: "rank \(pid)"))]
        for (tid, name) in names.sorted(by: { $0.key < $1.key }) {
            out.append(E(name: "thread_name", ph: "M", pid: pid, tid: Int(tid), args: A(name: name, members: members[tid])))
            out.append(E(name: "thread_sort_index", ph: "M", pid: pid, tid: Int(tid), args: A(sort_index: Int(tid))))
        }
        for i in 0..<n where events[i].pid == Int32(pid) {
            let e = events[i]
            var args = A()
            switch e.arg {
            case .none: break
            case .group(let g): args.group = g
            case .step(let s): args.step = s
            }
            if e.bytesSent >= 0 { args.bytes_sent = Int(e.bytesSent) }
            if e.sequence >= 0 { args.seq = Int(e.sequence) }
            let hasArgs = args.group != nil || args.step != nil || args.bytes_sent != nil
            out.append(E(name: e.name.description, ph: "X", pid: pid, tid: Int(e.tid), ts: Double(e.start) / 1000,
                         dur: Double(e.end &- e.start) / 1000, args: hasArgs ? args : nil))
        }
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try JSONEncoder().encode(TraceFile(traceEvents: out)).write(to: url, options: .atomic)
    }
}
