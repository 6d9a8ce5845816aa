import CLinux
import Foundation

/// Handle of a collective in flight (torch's `Work`). The buffers passed to the collective must stay
/// alive and untouched until `wait()` returns.
public final class Work: @unchecked Sendable {
    private let condition = NSCondition()
    private var finished = false
    private var failure: Error?
    let limitSeconds: Double
    /// Global rank that issued the collective (for the trace).
    var tracePid = 0

    init(limitSeconds: Double) { self.limitSeconds = limitSeconds }

    private var startedAt: Date?

    /// Called by the worker when the collective begins: its time limit runs from here, not from
    /// `wait()` (collectives queued before it on the same group run first).
    func markStarted() {
        condition.lock(); startedAt = Date(); condition.unlock()
    }

    func finish(_ error: Error?) {
        condition.lock()
        finished = true
        failure = error
        condition.broadcast()
        condition.unlock()
    }

    public var isCompleted: Bool {
        condition.lock(); defer { condition.unlock() }
        return finished
    }

    /// Blocks until the collective completed; rethrows its error. The collective has its own
    /// deadlines (every receive and send), so it ends within the group timeout. Should its worker
    /// still be running long past that (a bug), the process stops: returning would hand the caller
    /// back buffers that the collective may still read or write.
    public func wait() throws {
        let t0 = Trace.now()
        titan_cpu_board_mark_waiting(1)   // this rank's CPU may be lent meanwhile (see Sources/Tensor/IdleCPUs.swift)
        defer {
            titan_cpu_board_mark_waiting(0)
            let t1 = Trace.now()
            CommWait.add(t1 &- t0)
            if Trace.enabled { Trace.record("wait", pid: tracePid, tid: 0, start: t0, end: t1) }
        }
        condition.lock(); defer { condition.unlock() }
        while !finished {
            _ = condition.wait(until: Date().addingTimeInterval(1))
            if !finished, let startedAt, Date().timeIntervalSince(startedAt) > limitSeconds {
                fatalError("a collective's worker is stuck \(Int(limitSeconds))s after it started; stopping this rank rather than reuse buffers it may still touch")
            }
        }
        if let failure { throw failure }
    }
}

/// One thread per process group runs that group's collectives in submission order, like a NCCL
/// stream: collectives on different groups progress independently, and the caller can overlap them
/// with compute. The thread owns the group's sockets.
final class GroupWorker: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [() -> Void] = []
    private var stopping = false
    private let exited = DispatchSemaphore(value: 0)

    init(name: String) {
        let thread = Thread { self.run() }  // the thread keeps the worker alive until stop()
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    func submit(_ job: @escaping () -> Void) {
        condition.lock()
        queue.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Runs what is queued, then ends the thread; waits for it at most `seconds`.
    func stop(waitSeconds seconds: Double) {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
        _ = exited.wait(timeout: .now() + seconds)
    }

    private func run() {
        while true {
            condition.lock()
            while queue.isEmpty && !stopping { condition.wait() }
            if queue.isEmpty && stopping {
                condition.unlock()
                exited.signal()
                return
            }
            let job = queue.removeFirst()
            condition.unlock()
            job()
        }
    }
}

// MARK: - Instrumentation: blocked time and a tiny trace recorder

#if canImport(Glibc)
import Glibc
#endif

/// Nanoseconds the CURRENT thread spent blocked in `Work.wait()` (every blocking collective goes through it).
/// Thread-local, so ranks that are threads of one process each see their own training thread's total.
public enum CommWait {
    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k) { free($0) }
        return k
    }()

    @inline(__always) static func slot() -> UnsafeMutablePointer<UInt64> {
        if let p = pthread_getspecific(key) { return p.assumingMemoryBound(to: UInt64.self) }
        let p = malloc(MemoryLayout<UInt64>.size)!.assumingMemoryBound(to: UInt64.self)
        p.pointee = 0
        pthread_setspecific(key, p)
        return p
    }

    /// Total blocked nanoseconds of this thread since its last `reset()`.
    public static var nanoseconds: UInt64 { slot().pointee }
    public static func reset() { slot().pointee = 0 }
    @inline(__always) static func add(_ ns: UInt64) { slot().pointee &+= ns }
}

/// Chrome / Perfetto trace events ("X" complete events), off by default. Events go into one preallocated array
/// (a short critical section per event; nothing is allocated while recording); when it is full, further events
/// are counted and dropped. `pid` is the global rank, `tid` 0 the training thread and 1 + slot a group's worker.
public enum Trace {
    public struct Event {
        public var name: StaticString
        public var arg: Int32
        /// Payload bytes a collective's span sent (-1: not a collective).
        public var bytesSent: Int64
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

    /// Starts recording into a buffer of `capacity` events (idempotent; keeps what was recorded).
    public static func enable(capacity n: Int = 1 << 18) {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        if enabled { return }
        events = UnsafeMutablePointer<Event>.allocate(capacity: n)
        capacity = n
        count = 0
        enabled = true
    }

    @inline(__always) public static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Records a span [start, end) in nanoseconds of `now()`.
    @inline(__always)
    public static func record(_ name: StaticString, arg: Int = -1, bytesSent: Int = -1, pid: Int, tid: Int, start: UInt64, end: UInt64) {
        guard enabled else { return }
        pthread_mutex_lock(&lock)
        if count < capacity {
            events[count] = Event(name: name, arg: Int32(truncatingIfNeeded: arg), bytesSent: Int64(bytesSent),
                                  pid: Int32(truncatingIfNeeded: pid),
                                  tid: Int32(truncatingIfNeeded: tid), start: start, end: end)
            count += 1
        } else {
            dropped += 1
        }
        pthread_mutex_unlock(&lock)
    }

    /// Names a thread of a rank in the trace (e.g. "train", "group 1 [0, 1, 2, 3]").
    public static func nameThread(pid: Int, tid: Int, _ name: String) {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        threadNames[Int32(pid), default: [:]][Int32(tid)] = name
    }

    /// Writes the events of rank `pid` as Chrome trace JSON (`{"traceEvents": [...]}`, microseconds).
    public static func write(path: String, pid: Int) throws {
        pthread_mutex_lock(&lock)
        let n = count
        let names = threadNames[Int32(pid)] ?? [:]
        pthread_mutex_unlock(&lock)
        var out = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n"
        out += "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": \(pid), \"tid\": 0, \"args\": {\"name\": \"rank \(pid)\"}}"
        for (tid, name) in names.sorted(by: { $0.key < $1.key }) {
            out += ",\n{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": \(pid), \"tid\": \(tid), \"args\": {\"name\": \"\(name)\"}}"
            out += ",\n{\"name\": \"thread_sort_index\", \"ph\": \"M\", \"pid\": \(pid), \"tid\": \(tid), \"args\": {\"sort_index\": \(tid)}}"
        }
        for i in 0..<n where events[i].pid == Int32(pid) {
            let e = events[i]
            let ts = Double(e.start) / 1000, dur = Double(e.end &- e.start) / 1000
            out += ",\n{\"name\": \"\(e.name)\", \"ph\": \"X\", \"pid\": \(pid), \"tid\": \(e.tid), "
                + "\"ts\": \(String(format: "%.3f", ts)), \"dur\": \(String(format: "%.3f", dur))"
            let key = e.name.description == "step" ? "step" : "group"   // parameter group, or process group slot
            var args: [String] = []
            if e.arg >= 0 { args.append("\"\(key)\": \(e.arg)") }
            if e.bytesSent >= 0 { args.append("\"bytes_sent\": \(e.bytesSent)") }
            out += args.isEmpty ? "}" : ", \"args\": {\(args.joined(separator: ", "))}}"
        }
        out += "\n]}\n"
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try out.write(to: url, atomically: true, encoding: .utf8)
    }
}
