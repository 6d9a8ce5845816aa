// The flight records of a run (DUMP/flight/rank-K.json, written by ranks that failed or were stopped) and what they
// say together: which rank is behind, as torch's flight-recorder analyzer says it.

import Collectives
import Foundation

public enum FlightAnalysis {
    public static func recordPath(folder: String, rank: Int) -> String { "\(folder)/flight/rank-\(rank).json" }

    /// Writes `record` to DUMP/flight/rank-K.json; atomically, so a reader never sees half a record.
    public static func write(_ record: FlightRecord, folder: String) throws {
        try FileManager.default.createDirectory(atPath: folder + "/flight", withIntermediateDirectories: true)
        try JSONEncoder().encode(record).write(to: URL(fileURLWithPath: recordPath(folder: folder, rank: record.rank)),
                                               options: .atomic)
    }

    /// One line naming the rank(s) behind, from the records of a job of `worldSize` ranks written to `folder` at or
    /// after `since` (older ones are from an earlier attempt; an unreadable one counts as missing). Nil when there is
    /// no record, or no group has a member behind another while some member has a collective pending.
    public static func diagnose(folder: String, worldSize: Int, since: Date) -> String? {
        diagnose(readRecords(folder: folder, worldSize: worldSize, since: since))
    }

    /// The records of ranks 0..<worldSize taken at or after `since` (by their own clock: a file's modification time
    /// is kept at the kernel's tick, coarser than the records' times).
    static func readRecords(folder: String, worldSize: Int, since: Date) -> [FlightRecord] {
        (0..<worldSize).compactMap { rank in
            guard let data = FileManager.default.contents(atPath: recordPath(folder: folder, rank: rank)),
                  let record = try? JSONDecoder().decode(FlightRecord.self, from: data),
                  record.rank == rank, record.worldSize == worldSize, record.time >= since.timeIntervalSince1970
            else { return nil }
            return record
        }
    }

    /// Where one rank stands in one group.
    private struct Standing {
        var lastStarted: UInt64
        var lastCompleted: UInt64
        /// The first collective it has not completed (it waits in it, was failed by it, or has not started it).
        var pending: FlightRecord.Entry?
        /// The last one it completed.
        var completed: FlightRecord.Entry?
    }

    private struct GroupKey: Hashable, Comparable {
        var slot: Int
        var members: [Int]
        static func < (a: GroupKey, b: GroupKey) -> Bool { (a.slot, a.members.first ?? 0) < (b.slot, b.members.first ?? 0) }
    }

    /// Among the groups where some member has a collective pending, the one whose lagging members are most likely the
    /// cause: members that wrote no record or wait in no collective of their own (a member waiting elsewhere is held up
    /// by someone else), then the fewest laggards. Laggards: members that wrote no record, or started fewer of the
    /// group's collectives than the members furthest along.
    static func diagnose(_ records: [FlightRecord]) -> String? {
        guard !records.isEmpty else { return nil }
        var standings: [GroupKey: [Int: Standing]] = [:]
        var waiting = Set<Int>()   // ranks with a collective pending in some group
        for record in records {
            for group in record.groups {
                let entries = record.entries.filter { $0.groupSlot == group.slot }
                let pending = entries.filter { $0.state != .completed }.min { $0.sequence < $1.sequence }
                let completed = entries.first { $0.state == .completed && $0.sequence == group.lastCompleted }
                standings[GroupKey(slot: group.slot, members: group.members), default: [:]][record.rank] =
                    Standing(lastStarted: group.lastStarted, lastCompleted: group.lastCompleted, pending: pending,
                             completed: completed)
                if pending != nil { waiting.insert(record.rank) }
            }
        }
        let written = Set(records.map(\.rank))

        var best: (score: (Int, Int), key: GroupKey, laggards: [Int])?
        for (key, members) in standings.sorted(by: { $0.key < $1.key })
        where members.values.contains(where: { $0.pending != nil }) {
            let furthest = members.values.map(\.lastStarted).max() ?? 0
            let laggards = key.members.filter { members[$0].map { $0.lastStarted < furthest } ?? true }
            guard !laggards.isEmpty else { continue }
            let free = laggards.filter { !written.contains($0) || !waiting.contains($0) }.count
            let score = (free == laggards.count ? 0 : free > 0 ? 1 : 2, laggards.count)
            if best == nil || score < best!.score { best = (score, key, laggards) }
        }
        guard let (_, key, laggards) = best else { return nil }
        let members = standings[key]!

        // Each member's state; members in the same state share one clause, those ahead first.
        func state(_ rank: Int, plural: Bool) -> String {
            guard let s = members[rank] else { return "wrote no record (stopped, hung or killed)" }
            if let p = s.pending {
                let what = "\(p.kind) #\(p.sequence)"
                switch p.state {
                case .failed: return "failed in \(what)"
                case .scheduled: return (plural ? "have" : "has") + " not started \(what)"
                default: return (plural ? "wait" : "waits") + " in \(what)"
                }
            }
            if let c = s.completed { return "last completed \(c.kind) #\(c.sequence)" }
            return s.lastCompleted == 0 ? "completed no collective of this group" : "last completed #\(s.lastCompleted)"
        }
        var clauses: [(state: String, ranks: [Int])] = []
        for rank in key.members.filter({ !laggards.contains($0) }) + laggards {
            let one = state(rank, plural: false)
            if let i = clauses.firstIndex(where: { $0.state == one }) { clauses[i].ranks.append(rank) }
            else { clauses.append((one, [rank])) }
        }
        let described = clauses.map { c in
            c.ranks.count == 1 ? "rank \(c.ranks[0]) \(c.state)" : "ranks \(list(c.ranks)) \(state(c.ranks[0], plural: true))"
        }
        let who = laggards.count == 1 ? "rank \(laggards[0]) is" : "ranks \(list(laggards)) are"
        return "flight recorder: \(who) behind in group \(key.slot) \(key.members): \(described.joined(separator: ", "))"
    }

    private static func list(_ ranks: [Int]) -> String { ranks.map(String.init).joined(separator: ", ") }
}
