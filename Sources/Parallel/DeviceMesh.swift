import Collectives

/// The process groups of a (replicate, shard, ep) layout. Every rank creates them collectively, in the same order:
/// dpShard, dpReplicate (replicate > 1), ep (ep > 1), expertShard (ep > 1; otherwise the dpShard group itself).
public final class DeviceMesh {
    public let dims: ParallelDims
    public let comm: Communicator
    public let world: ProcessGroup
    /// The `shard` ranks of this replica (consecutive ranks).
    public let dpShard: ProcessGroup
    /// Ranks with the same shard index across replicas (nil when replicate == 1).
    public let dpReplicate: ProcessGroup?
    /// `ep` consecutive ranks inside dpShard (nil when ep == 1).
    public let ep: ProcessGroup?
    /// Ranks of dpShard holding the same experts: shard/ep of them, strided by ep. Identical to `dpShard` when ep == 1.
    public let expertShard: ProcessGroup

    /// `numExperts`: routed experts per MoE layer (0: a dense model; nil: not checked here).
    public init(comm: Communicator, dims: ParallelDims, numExperts: Int? = nil) throws {
        try dims.validate(worldSize: comm.worldSize, numExperts: numExperts)
        self.dims = dims
        self.comm = comm
        world = comm.world
        let R = dims.replicate, S = dims.shard, E = dims.ep
        dpShard = try comm.splitGroups((0..<R).map { r in Array((r * S)..<((r + 1) * S)) })
        dpReplicate = R > 1 ? try comm.splitGroups((0..<S).map { s in (0..<R).map { r in r * S + s } }) : nil
        if E > 1 {
            // EP groups: consecutive blocks of `E` ranks inside each replica.
            ep = try comm.splitGroups((0..<(R * S / E)).map { b in Array((b * E)..<((b + 1) * E)) })
            // Expert-shard groups: within a replica, ranks with the same index mod E.
            var parts: [[Int]] = []
            for r in 0..<R { for j in 0..<E { parts.append(stride(from: r * S + j, to: (r + 1) * S, by: E).map { $0 }) } }
            expertShard = try comm.splitGroups(parts)
        } else {
            ep = nil
            expertShard = dpShard
        }
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
