// The trace of a run (torchtitan's profiling section): with enable_trace, every rank records Chrome/Perfetto spans:
// per step, forward / backward of each parameter group and the optimizer on the training thread, where it blocked,
// and every collective on its process group's worker; DUMP/trace/rank-K.json is written after the last step.

import Collectives
import Config
import Model
import Parallel
import Runtime

/// [profiling]
public struct ProfilingConfig: ConfigSection {
    public var enable_trace = false
    public init() {}

    public static let doc = "timing trace"
    public static let fields: [ConfigField<ProfilingConfig>] = [
        ConfigField("enable_trace", \.enable_trace, "write a Chrome/Perfetto trace of the run to DUMP/trace/rank-K.json"),
    ]
}

/// This rank's trace: started by `start`, spans added by the trainer and the model's hooks, written by `write`.
public struct Profiler {
    let rank: Int
    let dumpFolder: String

    /// Starts recording (off unless `config.enable_trace`): names this rank's tracks and wraps the model's hooks
    /// (FSDP's, when applied) in spans per parameter group. Nil when tracing is off.
    public static func start(_ config: ProfilingConfig, rank: Int, dumpFolder: String, mesh: DeviceMesh, model: ParallelizableModel) -> Profiler? {
        guard config.enable_trace else { return nil }
        Trace.enable()
        Trace.nameThread(pid: rank, tid: 0, "train")
        var named = Set<Int>()
        for g in [mesh.world, mesh.dpShard, mesh.dpReplicate, mesh.ep, mesh.expertShard].compactMap({ $0 }) where named.insert(g.slot).inserted {
            Trace.nameThread(pid: rank, tid: Trace.collectiveTrack(group: g.slot), "collectives: group \(g.slot) \(g.members)", members: g.members)
        }
        model.hooks = ModelHookChain([GroupSpans(rank: rank), model.hooks])
        return Profiler(rank: rank, dumpFolder: dumpFolder)
    }

    /// Writes DUMP/trace/rank-K.json; returns its path and how many events a full buffer dropped.
    public func write() throws -> (path: String, dropped: Int) {
        let path = dumpFolder + "/trace/rank-\(rank).json"
        try Trace.write(path: path, pid: rank)
        return (path, Trace.dropped)
    }
}

/// A "forward" / "backward" span per parameter group, around whatever the hooks after it do (FSDP's gather and free).
final class GroupSpans: ModelHooks {
    let rank: Int
    private var start: [UInt64] = [], track: [Int] = []
    private var openOnTrainingTrack = 0
    /// Track of a group's span that begins while another group's is open (the tied embedding used by the output
    /// projection): its backward outlives the enclosing span, which a single track cannot draw. Process-group workers
    /// use tracks 1...16.
    static let nestedTrack = 64

    init(rank: Int) { self.rank = rank }

    private func begin(_ g: Int) {
        if start.count <= g {
            start += [UInt64](repeating: 0, count: g + 1 - start.count)
            track += [Int](repeating: 0, count: g + 1 - track.count)
        }
        start[g] = Runtime.now()
        track[g] = openOnTrainingTrack > 0 ? Self.nestedTrack : 0
        if track[g] == 0 { openOnTrainingTrack += 1 }
    }

    private func end(_ name: StaticString, _ g: Int) {
        if track[g] == 0 { openOnTrainingTrack -= 1 }
        Trace.record(name, arg: .group(g), pid: rank, tid: track[g], start: start[g], end: Runtime.now())
    }

    func willForward(group g: Int) { begin(g) }
    func didForward(group g: Int) { end("forward", g) }
    func willBackward(group g: Int) { begin(g) }
    func didBackward(group g: Int) { end("backward", g) }
}
