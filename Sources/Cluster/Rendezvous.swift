// How the launchers of one job on several hosts (`--node K` each) agree on restarts: through files in a folder they
// all see (`--rdzv-dir`, e.g. on a shared file system; torchrun's file rendezvous). Each launcher keeps its state in
// RDZV/JOB/node-K.json (attempt, phase, heartbeat); when one host's ranks fail, the others see it and stop theirs;
// when every host has stopped (or is lost: no heartbeat), the lowest surviving host writes RDZV/JOB/attempt-N.json
// with the hosts of the next attempt, and every launcher starts its ranks again.

import Foundation

public struct RendezvousError: Error, CustomStringConvertible, Equatable {
    public var reason: String
    public var description: String { reason }
}

final class Rendezvous {
    enum Phase: String, Codable { case running, failed, stopped, done }

    struct NodeState: Codable, Equatable {
        var node: Int
        var attempt: Int
        var phase: Phase
        var reason: String?
        /// Seconds since 1970 when this launcher last wrote (every tick).
        var heartbeat: Double
    }

    struct AttemptPlan: Codable, Equatable {
        var attempt: Int
        /// Host indices of the original topology that run this attempt.
        var hosts: [Int]
    }

    let folder: String
    let node: Int
    /// A host whose launcher has not written for this long is lost.
    let timeout: Double
    /// Files older than this belong to an earlier run of the same job id.
    let startedAt: Double
    private(set) var state: NodeState

    init(folder root: String, jobID: String, node: Int, timeout: Double) throws {
        folder = (root as NSString).appendingPathComponent(Launcher.pathSafe(jobID))
        self.node = node
        self.timeout = timeout
        startedAt = Date().timeIntervalSince1970
        state = NodeState(node: node, attempt: 0, phase: .running, reason: nil, heartbeat: startedAt)
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw RendezvousError(reason: "rendezvous folder \(folder): \(error.localizedDescription)")
        }
        // Plans left by an earlier run of this job id would be taken for this run's.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] where name.hasPrefix("attempt-") {
            let path = (folder as NSString).appendingPathComponent(name)
            if let m = try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date,
               m.timeIntervalSince1970 < startedAt - 1 {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
        publish()
    }

    private func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }

    private func write<T: Encodable>(_ value: T, to name: String) {
        guard let data = try? JSONEncoder().encode(value) else { return }
        let tmp = path(name + ".tmp-\(getpid())")
        if FileManager.default.createFile(atPath: tmp, contents: data) { rename(tmp, path(name)) }
    }

    private func read<T: Decodable>(_ type: T.Type, _ name: String) -> T? {
        FileManager.default.contents(atPath: path(name)).flatMap { try? JSONDecoder().decode(type, from: $0) }
    }

    /// Writes this launcher's state with a fresh heartbeat.
    func publish(attempt: Int? = nil, phase: Phase? = nil, reason: String? = nil) {
        if let attempt { state.attempt = attempt }
        if let phase { state.phase = phase; state.reason = reason }
        state.heartbeat = Date().timeIntervalSince1970
        write(state, to: "node-\(node).json")
    }

    /// The state of `host`'s launcher in this run, or nil (not joined, or only a file of an earlier run).
    func peer(_ host: Int) -> NodeState? {
        guard let s = read(NodeState.self, "node-\(host).json"), s.heartbeat >= startedAt - 2 else { return nil }
        return s
    }

    func isLost(_ s: NodeState?) -> Bool {
        guard let s else { return true }
        return s.phase != .done && Date().timeIntervalSince1970 - s.heartbeat > timeout
    }

    /// During an attempt: why this launcher must stop its ranks (another host failed, or is lost), or nil.
    func peerFailure(hosts: [Int]) -> String? {
        publish()
        for host in hosts where host != node {
            guard let s = peer(host) else { continue }   // not joined yet: its ranks are awaited by ours
            if s.attempt > state.attempt || (s.attempt == state.attempt && s.phase == .failed) {
                return "host \(host) failed" + (s.reason.map { ": \($0)" } ?? "")
            }
            if isLost(s) { return "host \(host) is lost: its launcher has not written for over \(String(format: "%g", timeout)) s" }
        }
        return nil
    }

    /// After a failed attempt: waits until every other host of it has stopped its ranks or is lost; returns the lost.
    func awaitStopped(hosts: [Int]) throws -> [Int] {
        let deadline = Date().addingTimeInterval(timeout + 5)
        while true {
            publish()
            var lost: [Int] = [], waiting: [Int] = []
            for host in hosts where host != node {
                let s = peer(host)
                if isLost(s) { lost.append(host) } else if s!.attempt == state.attempt && s!.phase == .running { waiting.append(host) }
            }
            if waiting.isEmpty { return lost }
            guard Date() < deadline else {
                throw RendezvousError(reason: "host(s) \(waiting.map(String.init).joined(separator: ", ")) did not stop their ranks within \(Int(timeout + 5)) s")
            }
            usleep(200_000)
        }
    }

    /// Agrees on the hosts of the next attempt: those of this one but the `lost` (the lowest survivor decides;
    /// without `elastic` every host must survive).
    func nextAttempt(hosts: [Int], lost: [Int], elastic: Bool, log: (String) -> Void) throws -> [Int] {
        let attempt = state.attempt
        let survivors = hosts.filter { !lost.contains($0) }
        if !lost.isEmpty {
            let names = lost.map(String.init).joined(separator: ", ")
            guard elastic else {
                throw RendezvousError(reason: "host(s) \(names) lost (no launcher heartbeat for \(String(format: "%g", timeout)) s); with --elastic the job would continue on the others")
            }
            log("host(s) \(names) lost: continuing on host(s) \(survivors.map(String.init).joined(separator: ", ")) (--elastic)")
        }
        let name = "attempt-\(attempt + 1).json"
        if node == survivors.min() { write(AttemptPlan(attempt: attempt + 1, hosts: survivors), to: name) }
        let planDeadline = Date().addingTimeInterval(timeout + 5)
        while true {
            publish()
            if let plan = read(AttemptPlan.self, name) {
                guard plan.hosts.contains(node) else {
                    throw RendezvousError(reason: "the other hosts continued without this one (attempt \(attempt + 1) runs on host(s) \(plan.hosts))")
                }
                publish(attempt: attempt + 1, phase: .running)
                return plan.hosts
            }
            guard Date() < planDeadline else {
                throw RendezvousError(reason: "no plan for attempt \(attempt + 1) from host \(survivors.min()!) within \(Int(timeout + 5)) s")
            }
            usleep(200_000)
        }
    }
}
