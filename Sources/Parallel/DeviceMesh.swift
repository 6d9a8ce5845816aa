import Collectives

/// The process groups of a (replicate, shard, ep) layout. Every rank creates them collectively, in the same order:
/// dpShard, dpReplicate (replicate > 1), ep (ep > 1), expertShard (ep > 1; otherwise the dpShard group itself).
///
/// Placement. Topologies number ranks host by host, so groups of consecutive ranks stay within a host whenever its rank
/// count is a multiple of the group's size: a replica's shard group (HSDP: shard within a host, replicate across
/// hosts) and, with `ExpertParallelPlacement.consecutive`, the expert-parallel groups. `strided` spreads each EP group
/// over its replica instead (across hosts) and keeps the expert-shard groups within a host: better when the experts'
/// weights outweigh the tokens. The trainer resolves `auto` to one of the two first (`ExpertTraffic.placement`,
/// docs/simulated-network.md).
public final class DeviceMesh {
    public let dims: ParallelDims
    public let comm: Communicator
    public let world: ProcessGroup
    /// The `shard` ranks of this replica (consecutive ranks).
    public let dpShard: ProcessGroup
    /// Ranks with the same shard index across replicas (nil when replicate == 1).
    public let dpReplicate: ProcessGroup?
    /// `ep` ranks inside dpShard (nil when ep == 1): consecutive ones, or strided by shard/ep (`expertPlacement`).
    public let ep: ProcessGroup?
    /// Ranks of dpShard holding the same experts (the same EP index): shard/ep of them. Identical to `dpShard` when
    /// ep == 1.
    public let expertShard: ProcessGroup
    /// Every group of each kind, as created (for `placementSummary`).
    public let partitions: [(name: String, groups: [[Int]])]

    /// `numExperts`: routed experts per MoE layer (0: a dense model; nil: not checked here).
    public init(comm: Communicator, dims: ParallelDims, numExperts: Int? = nil,
                expertPlacement: ExpertParallelPlacement = .consecutive) throws {
        try dims.validate(worldSize: comm.worldSize, numExperts: numExperts)
        precondition(expertPlacement != .auto, "DeviceMesh: resolve expert_parallel_placement auto first (ExpertTraffic.placement)")
        self.dims = dims
        self.comm = comm
        world = comm.world
        let R = dims.replicate, S = dims.shard, E = dims.ep
        let shardGroups = (0..<R).map { r in Array((r * S)..<((r + 1) * S)) }
        var partitions = [(name: "dp_shard", groups: shardGroups)]
        dpShard = try comm.splitGroups(shardGroups)
        if R > 1 {
            let replicateGroups = (0..<S).map { s in (0..<R).map { r in r * S + s } }
            partitions.append(("dp_replicate", replicateGroups))
            dpReplicate = try comm.splitGroups(replicateGroups)
        } else {
            dpReplicate = nil
        }
        if E > 1 {
            let groups = Self.expertGroups(dims: dims, placement: expertPlacement)
            partitions += [("ep", groups.ep), ("expert_shard", groups.expertShard)]
            ep = try comm.splitGroups(groups.ep)
            expertShard = try comm.splitGroups(groups.expertShard)
        } else {
            ep = nil
            expertShard = dpShard
        }
        self.partitions = partitions
    }

    /// The EP groups and expert-shard groups of `dims` (ep > 1) under `placement` (consecutive or strided). Within replica r, EP group b's member j (EP index j) is rank r·S + b·E + j (consecutive) or
    /// r·S + b + j·(S/E) (strided); an expert-shard group is the ranks of a replica with the same EP index.
    public static func expertGroups(dims: ParallelDims, placement: ExpertParallelPlacement) -> (ep: [[Int]], expertShard: [[Int]]) {
        let R = dims.replicate, S = dims.shard, E = dims.ep
        func member(_ r: Int, _ b: Int, _ j: Int) -> Int {
            placement == .strided ? r * S + b + j * (S / E) : r * S + b * E + j
        }
        var epGroups: [[Int]] = [], expertShardGroups: [[Int]] = []
        for r in 0..<R {
            for b in 0..<(S / E) { epGroups.append((0..<E).map { member(r, b, $0) }) }
            for j in 0..<E { expertShardGroups.append((0..<(S / E)).map { member(r, $0, j) }) }
        }
        return (epGroups, expertShardGroups)
    }

    /// Where the groups run, e.g. "dp_shard across 2 hosts, ep within a host, expert_shard across 2 hosts"; nil on a
    /// single-host topology.
    public var placementSummary: String? {
        let hostOf = comm.spec.hostIndexOfRank
        guard Set(hostOf).count > 1 else { return nil }
        return partitions.map { kind in
            let spans = kind.groups.map { Set($0.map { hostOf[$0] }).count }.max() ?? 1
            return kind.name + (spans == 1 ? " within a host" : " across \(spans) hosts")
        }.joined(separator: ", ")
    }

    public var rank: Int { comm.rank }
    /// Index of this rank's replica.
    public var replicaIndex: Int { comm.rank / dims.shard }
    /// This rank's EP index (which slice of experts it holds); 0 when ep == 1.
    public var epRank: Int { ep?.rank ?? 0 }
    /// Data-loader rank: every rank is data parallel (EP ranks see different tokens too).
    public var dataParallelRank: Int { comm.rank }
    public var dataParallelDegree: Int { dims.world }
}
