// One trace of the whole job: after every rank wrote DUMP/trace/rank-K.json, rank 0 merges them into
// DUMP/trace/trace.json. Each rank is a process (pid = rank), its training thread and each process group's worker are
// its threads, every collective span carries kind, group, sequence number and bytes, and flow arrows run from the
// rank that arrived last at a collective (its span began last: the others waited for it) to every other member's span
// of the same collective, so a straggler stands out in Perfetto.
//
// Times are each rank's CLOCK_MONOTONIC, which all processes of one machine share. Ranks on other hosts have their
// own clocks (their spans are merged as they are, shifted arbitrarily), and their files are merged only when rank 0
// sees them (a shared dump folder).

import Collectives
import Foundation

public enum TraceMerge {
    /// The Chrome trace events we read and write (what Trace.write produces, plus flow fields).
    struct Event: Codable {
        struct Args: Codable {
            var name: String?, sort_index: Int?, group: Int?, step: Int?, bytes_sent: Int?, seq: Int?, members: [Int]?
        }
        var name: String, ph: String, pid: Int, tid: Int
        var ts: Double?, dur: Double?
        var cat: String?, id: Int?, bp: String?
        var args: Args?
    }

    struct File: Codable {
        var displayTimeUnit: String?
        var traceEvents: [Event]
    }

    /// Merges DUMP/trace/rank-0...rank-(worldSize-1).json into DUMP/trace/trace.json; returns its path and the ranks
    /// whose file was not there.
    public static func merge(traceFolder: String, worldSize: Int) throws -> (path: String, missing: [Int]) {
        var events: [Event] = []
        var missing: [Int] = []
        for rank in 0..<worldSize {
            guard let data = FileManager.default.contents(atPath: "\(traceFolder)/rank-\(rank).json") else {
                missing.append(rank); continue
            }
            events += try JSONDecoder().decode(File.self, from: data).traceEvents
            events.append(Event(name: "process_sort_index", ph: "M", pid: rank, tid: 0, args: .init(sort_index: rank)))
        }
        events += flows(events)
        let path = traceFolder + "/trace.json"
        try JSONEncoder().encode(File(displayTimeUnit: "ms", traceEvents: events)).write(to: URL(fileURLWithPath: path), options: .atomic)
        return (path, missing)
    }

    /// One collective as every member ran it: (group members, group slot, sequence number).
    struct CollectiveKey: Hashable { var members: [Int], group: Int, seq: Int }

    /// Flow arrows ("s" → "f", one pair per waiting member) from the last member to begin each collective.
    static func flows(_ events: [Event]) -> [Event] {
        var members: [Int: [Int: [Int]]] = [:]   // pid → tid → the group's members
        for e in events where e.ph == "M" && e.name == "thread_name" {
            if let m = e.args?.members { members[e.pid, default: [:]][e.tid] = m }
        }
        var spans: [CollectiveKey: [Event]] = [:]
        for e in events where e.ph == "X" {
            guard let seq = e.args?.seq, let group = e.args?.group, let m = members[e.pid]?[e.tid] else { continue }
            spans[CollectiveKey(members: m, group: group, seq: seq), default: []].append(e)
        }
        var out: [Event] = []
        var id = 0
        for key in spans.keys.sorted(by: { ($0.group, $0.seq, $0.members.first ?? 0) < ($1.group, $1.seq, $1.members.first ?? 0) }) {
            let list = spans[key]!
            guard list.count > 1, let last = list.max(by: { ($0.ts ?? 0) < ($1.ts ?? 0) }) else { continue }
            for other in list where other.pid != last.pid {
                id += 1
                let end = (other.ts ?? 0) + max(0, (other.dur ?? 0) - 0.001)
                out.append(Event(name: "waited for rank \(last.pid)", ph: "s", pid: last.pid, tid: last.tid, ts: last.ts,
                                 cat: "collective", id: id))
                out.append(Event(name: "waited for rank \(last.pid)", ph: "f", pid: other.pid, tid: other.tid, ts: end,
                                 cat: "collective", id: id, bp: "e"))
            }
        }
        return out
    }
}

extension Profiler {
    /// After every rank wrote its trace (a barrier over `world`), rank 0 merges them into DUMP/trace/trace.json.
    /// Returns its path on rank 0 (and the ranks whose files it could not see), nil elsewhere.
    public func mergeAfterEveryRankWrote(world: ProcessGroup) throws -> (path: String, missing: [Int])? {
        try world.barrier()
        guard rank == 0 else { return nil }
        return try TraceMerge.merge(traceFolder: dumpFolder + "/trace", worldSize: world.size)
    }
}
