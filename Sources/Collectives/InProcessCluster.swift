import Foundation

/// Runs every rank of a job as a thread of this process, talking over ZeroMQ `inproc` through the
/// same collective code as separate processes do: one debugger sees the whole job.
public enum InProcessCluster {
    /// Runs `body` once per rank, each on its own thread with its own Communicator; returns each
    /// rank's error (nil when it finished cleanly). The first rank that fails shuts the shared
    /// context down, so the others fail at their next socket call instead of at a timeout
    /// (as the launcher stops the other processes of a multi-process job). `hostIndexOfRank`: simulated hosts (for
    /// hierarchical collectives); empty: one host.
    public static func run(worldSize: Int, jobID: String = "inproc-\(UUID().uuidString.prefix(8))",
                           timeoutSeconds: Double = 300, traceBufferSize: Int = Communicator.defaultTraceBufferSize,
                           hostIndexOfRank: [Int] = [],
                           _ body: @escaping @Sendable (Communicator) throws -> Void) -> [Error?] {
        let context = ZMQContext()
        let spec = ClusterSpec(jobID: jobID, worldSize: worldSize, transport: .inproc, timeoutSeconds: timeoutSeconds,
                               hostIndexOfRank: hostIndexOfRank)
        let results = ResultBox(count: worldSize)
        let done = DispatchGroup()
        for rank in 0..<worldSize {
            done.enter()
            let thread = Thread {
                defer { done.leave() }
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
        done.wait()
        return results.values
    }

    private final class ResultBox: @unchecked Sendable {
        private let lock = NSLock()
        private(set) var values: [Error?]
        init(count: Int) { values = Array(repeating: nil, count: count) }
        func set(_ i: Int, _ e: Error) { lock.lock(); values[i] = e; lock.unlock() }
    }
}
