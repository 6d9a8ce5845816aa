// The hooks the collectives call while a rank runs, and the observers that listen: blocked-time accounting
// (`BlockedTime`), the trace (`Trace`) and idle-CPU lending (`IdleCPUs`). Collectives report what happened; they do
// not know who listens.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Listens to collectives. Every method has a default that does nothing.
public protocol CollectiveObserver: AnyObject, Sendable {
    /// The calling thread is about to block on a collective (`Work.wait`).
    func waitBegan()
    /// ...and stopped blocking. `rank`: the global rank that issued the collective; times are `Runtime.now()`.
    func waitEnded(rank: Int, start: UInt64, end: UInt64)
    /// A collective ran on the worker thread of process group `group` (its slot), the group's `sequence`-th, sending
    /// `bytesSent` payload bytes.
    func collectiveRan(_ name: StaticString, rank: Int, group: Int, sequence: Int, bytesSent: Int, start: UInt64, end: UInt64)
}

public extension CollectiveObserver {
    func waitBegan() {}
    func waitEnded(rank: Int, start: UInt64, end: UInt64) {}
    func collectiveRan(_ name: StaticString, rank: Int, group: Int, sequence: Int, bytesSent: Int, start: UInt64, end: UInt64) {}
}

public enum Runtime {
    /// Monotonic nanoseconds (every span and duration of a run uses this clock).
    @inline(__always) public static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var observers: [CollectiveObserver] = []

    /// Adds `observer` (once: installing it again changes nothing). Observers are process-wide, as the threads of a
    /// single-process job share them.
    public static func install(_ observer: CollectiveObserver) {
        lock.lock(); defer { lock.unlock() }
        if !observers.contains(where: { $0 === observer }) { observers.append(observer) }
    }

    public static func uninstall(_ observer: CollectiveObserver) {
        lock.lock(); defer { lock.unlock() }
        observers.removeAll { $0 === observer }
    }

    @inline(__always) private static var current: [CollectiveObserver] {
        lock.lock(); defer { lock.unlock() }
        return observers
    }

    // MARK: called by the collectives

    /// The calling thread starts blocking on a collective; returns the start time to pass to `waitEnded`.
    public static func waitBegan() -> UInt64 {
        let start = now()
        for o in current { o.waitBegan() }
        return start
    }

    public static func waitEnded(rank: Int, start: UInt64) {
        let end = now()
        for o in current { o.waitEnded(rank: rank, start: start, end: end) }
    }

    public static func collectiveRan(_ name: StaticString, rank: Int, group: Int, sequence: Int, bytesSent: Int, start: UInt64) {
        let observers = current
        guard !observers.isEmpty else { return }
        let end = now()
        for o in observers { o.collectiveRan(name, rank: rank, group: group, sequence: sequence, bytesSent: bytesSent, start: start, end: end) }
    }
}
