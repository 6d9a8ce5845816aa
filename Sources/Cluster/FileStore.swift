// How ranks whose scheduler does not say which host each one runs on (Open MPI, PMI, torchrun on several hosts) learn
// it before they can connect: through files in a folder every host sees (`--rdzv-dir`, default the job's dump folder),
// as torch's FileStore does. Every rank writes ROOT/rdzv-JOB/rank-K.json (its host name), then reads until all
// world-size entries are there, with a deadline; the last rank to finish reading removes the folder. An entry left by a
// killed earlier run of the same job id is told apart by its time: it is older than the deadline.

import Foundation

public struct FileStore: Sendable {
    public struct Entry: Codable, Equatable, Sendable {
        public var rank: Int
        public var worldSize: Int
        public var host: String
        /// Seconds since 1970 when the rank began the exchange.
        public var written: Double

        public init(rank: Int, worldSize: Int, host: String, written: Double) {
            self.rank = rank
            self.worldSize = worldSize
            self.host = host
            self.written = written
        }
    }

    /// ROOT/rdzv-JOB: this job's entries.
    public let folder: String
    /// Seconds to wait for every rank.
    public let timeout: Double

    public init(root: String, jobID: String, timeout: Double) {
        folder = (root as NSString).appendingPathComponent("rdzv-" + Launcher.pathSafe(jobID))
        self.timeout = timeout
    }

    /// Publishes `host` as `rank`'s and returns every rank's entry, in rank order. Throws when a rank has not written
    /// within the timeout, naming the ranks missing.
    public func exchange(rank: Int, worldSize: Int, host: String) throws -> [Entry] {
        precondition((0..<worldSize).contains(rank), "rank \(rank) outside world of \(worldSize)")
        let started = Date().timeIntervalSince1970
        let deadline = Date().addingTimeInterval(timeout)
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw RendezvousError(reason: "rendezvous folder \(folder): \(error.localizedDescription)")
        }
        try write(Entry(rank: rank, worldSize: worldSize, host: host, written: started), to: "rank-\(rank).json")

        // Entries of this run began within one timeout of ours (or every rank waits in vain anyway).
        func current(_ e: Entry?, _ r: Int) -> Entry? {
            guard let e, e.rank == r, e.worldSize == worldSize, e.written >= started - timeout else { return nil }
            return e
        }
        var entries = [Entry?](repeating: nil, count: worldSize)
        var pause = 0.01
        while true {
            for r in 0..<worldSize where entries[r] == nil { entries[r] = current(read(Entry.self, "rank-\(r).json"), r) }
            if entries.allSatisfy({ $0 != nil }) { break }
            guard Date() < deadline else {
                let missing = entries.indices.filter { entries[$0] == nil }
                throw RendezvousError(reason: "rendezvous in \(folder): rank(s) \(Self.shortList(missing)) of \(worldSize) did not "
                    + "arrive within \(String(format: "%g", timeout)) s; are they running, and is the folder on a file system every "
                    + "host sees (--rdzv-dir)?")
            }
            Thread.sleep(forTimeInterval: pause)
            pause = min(pause * 2, 0.2)
        }

        // Done reading: the last rank out removes the folder (a later run of the same job id starts empty).
        try? write(Entry(rank: rank, worldSize: worldSize, host: host, written: started), to: "done-\(rank).json")
        if (0..<worldSize).allSatisfy({ current(read(Entry.self, "done-\($0).json"), $0) != nil }) {
            try? FileManager.default.removeItem(atPath: folder)
        }
        return entries.map { $0! }
    }

    private func path(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }

    /// Written whole or not at all (a reader never sees half an entry).
    private func write<T: Encodable>(_ value: T, to name: String) throws {
        let tmp = path(".\(name).tmp-\(getpid())")
        guard let data = try? JSONEncoder().encode(value), FileManager.default.createFile(atPath: tmp, contents: data),
              rename(tmp, path(name)) == 0 else {
            throw RendezvousError(reason: "rendezvous folder \(folder): cannot write \(name)")
        }
    }

    private func read<T: Decodable>(_ type: T.Type, _ name: String) -> T? {
        FileManager.default.contents(atPath: path(name)).flatMap { try? JSONDecoder().decode(type, from: $0) }
    }

    /// "1, 3, 5" or "1, 3, 5, … (12 in all)".
    static func shortList<T: CustomStringConvertible>(_ values: [T]) -> String {
        let shown = values.prefix(8).map(\.description).joined(separator: ", ")
        return values.count > 8 ? shown + ", … (\(values.count) in all)" : shown
    }
}
