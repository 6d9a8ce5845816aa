#if canImport(Glibc)
import Glibc
#endif

/// Nanoseconds the CURRENT thread spent blocked in collectives (every blocking collective goes through `Work.wait`).
/// Thread-local, so ranks that are threads of one process each see their own training thread's total.
/// Counts once `BlockedTime.observer` is installed (`Runtime.install`).
public enum BlockedTime {
    public static let observer: CollectiveObserver = Observer()

    private final class Observer: CollectiveObserver {
        func waitEnded(rank: Int, start: UInt64, end: UInt64) { BlockedTime.slot().pointee &+= end &- start }
    }

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
}
