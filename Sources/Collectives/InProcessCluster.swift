import Foundation

/// Runs every rank of a job as a thread of this process, talking over ZeroMQ `inproc` through the
/// same collective code as separate processes do: one debugger sees the whole job.
public enum InProcessCluster {
    /// Runs `body` once per rank, each on its own thread with its own Communicator; returns each
    /// rank's error (nil when it finished cleanly). The first rank that fails shuts the shared
    /// context down, so the others fail at their next socket call instead of at a timeout
    /// (as the launcher stops the other processes of a multi-process job). A rank that has not ended
    /// `abandonAfterSeconds` after that (default: `timeoutSeconds`, at least 10 s; stuck outside the sockets: a compute
    /// loop, a hang) is reported as such and its thread abandoned, as the launcher kills a process that ignores
    /// SIGTERM. `hostIndexOfRank`: simulated hosts (for hierarchical collectives); empty: one host.
    public static func run(worldSize: Int, jobID: String = "inproc-\(UUID().uuidString.prefix(8))",
                           timeoutSeconds: Double = 300, traceBufferSize: Int = Communicator.defaultTraceBufferSize,
                           hostIndexOfRank: [Int] = [], abandonAfterSeconds: Double? = nil,
                           _ body: @escaping @Sendable (Communicator) throws -> Void) -> [Error?] {
        let context = ZMQContext()
        let spec = ClusterSpec(jobID: jobID, worldSize: worldSize, transport: .inproc, timeoutSeconds: timeoutSeconds,
                               hostIndexOfRank: hostIndexOfRank)
        let results = ResultBox(count: worldSize)
        let done = DispatchGroup()
        for rank in 0..<worldSize {
            done.enter()
            let thread = Thread {
                defer { results.finish(rank); done.leave() }
                do {
                    let comm = try Communicator(spec: spec, rank: rank, context: context, traceBufferSize: traceBufferSize)
                    defer { comm.shutdown() }
                    try body(comm)
                } catch {
                    results.set(rank, error)
                    context.shutdown()
                }
            }
            thread.name = "titan-rank\(rank)"
            thread.stackSize = 8 << 20
            thread.start()
        }
        let grace = abandonAfterSeconds ?? max(timeoutSeconds, 10)
        var firstFailure: Date?
        while done.wait(timeout: .now() + 0.1) == .timedOut {
            if firstFailure == nil, results.anyFailed { firstFailure = Date() }
            if let t = firstFailure, Date().timeIntervalSince(t) > grace {
                for rank in results.unfinished { results.set(rank, RankDidNotEnd(rank: rank, seconds: grace)) }
                // Never terminated: the stuck threads still hold sockets of it, and zmq_ctx_term would wait for them.
                _ = Unmanaged.passRetained(context)
                break
            }
        }
        return results.values
    }

    /// A rank thread still running `seconds` after another rank failed.
    public struct RankDidNotEnd: Error, CustomStringConvertible {
        public var rank: Int, seconds: Double
        public var description: String {
            "rank \(rank) did not end within \(seconds) s of another rank's failure (stuck outside the collectives); "
                + "its thread was abandoned"
        }
    }

    private final class ResultBox: @unchecked Sendable {
        private let lock = NSLock()
        private var errors: [Error?], ended: [Bool]
        init(count: Int) { errors = Array(repeating: nil, count: count); ended = Array(repeating: false, count: count) }
        func set(_ i: Int, _ e: Error) { lock.lock(); errors[i] = e; lock.unlock() }
        func finish(_ i: Int) { lock.lock(); ended[i] = true; lock.unlock() }
        var values: [Error?] { lock.lock(); defer { lock.unlock() }; return errors }
        var anyFailed: Bool { lock.lock(); defer { lock.unlock() }; return errors.contains { $0 != nil } }
        var unfinished: [Int] { lock.lock(); defer { lock.unlock() }; return ended.indices.filter { !ended[$0] } }
    }
}
