import Foundation

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
