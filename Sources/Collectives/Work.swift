import Foundation

/// Handle of a collective in flight (torch's `Work`). The buffers passed to the collective must stay
/// alive and untouched until `wait()` returns.
public final class Work: @unchecked Sendable {
    private let condition = NSCondition()
    private var finished = false
    private var failure: Error?
    let limitSeconds: Double

    init(limitSeconds: Double) { self.limitSeconds = limitSeconds }

    static func completed() -> Work {
        let w = Work(limitSeconds: 0)
        w.finish(nil)
        return w
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
    /// deadline, so this returns within the group timeout (plus a margin for queued work).
    public func wait() throws {
        condition.lock(); defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(limitSeconds)
        while !finished {
            if !condition.wait(until: deadline), !finished {
                throw CollectiveError.groupClosed("a collective did not finish within \(Int(limitSeconds))s (its group's worker is stuck)")
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
