import Foundation
import Runtime

/// Handle of a collective in flight (torch's `Work`). The buffers passed to the collective must stay
/// alive and untouched until `wait()` returns.
public final class Work: @unchecked Sendable {
    private let condition = NSCondition()
    private var finished = false
    private var failure: Error?
    /// Global rank that issued the collective (observers are told).
    let rank: Int

    init(rank: Int) {
        self.rank = rank
    }

    private var startedAt: Date?
    private var limitSeconds = 0.0

    /// Called by the worker when the collective begins: its time limit runs from here, not from
    /// `wait()` (collectives queued before it on the same group run first), and follows the timeout in force then.
    func markStarted(limitSeconds: Double) {
        condition.lock(); startedAt = Date(); self.limitSeconds = limitSeconds; condition.unlock()
    }

    func finish(_ error: Error?) {
        condition.lock()
        finished = true
        failure = error
        condition.broadcast()
        condition.unlock()
    }

    /// Blocks until the collective completed; rethrows its error. The collective has its own
    /// deadlines (every receive and send), so it ends within the group timeout. Should its worker
    /// still be running long past that (a bug), the process stops: returning would hand the caller
    /// back buffers that the collective may still read or write.
    public func wait() throws {
        let start = Runtime.waitBegan()   // observers: blocked time, the trace, idle-CPU lending
        defer { Runtime.waitEnded(rank: rank, start: start) }
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
