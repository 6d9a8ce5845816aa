import Collectives

/// Errors of the parallelism layer: they name the config key (or the parameter) and say what to change.
public enum ParallelError: Error, CustomStringConvertible, Equatable {
    /// Degrees that do not fit the world size or the model (`key` is the config key to change).
    case invalidDegrees(key: String, String)
    /// A parameter that cannot be sharded as asked.
    case invalidParameter(fqn: String, String)
    /// A state dict that does not match the model.
    case stateDict(String)
    /// A collective failed inside a model hook (hooks cannot throw; reported by the next throwing call).
    case collectiveFailed(rank: Int, String)

    public var description: String {
        switch self {
        case let .invalidDegrees(key, m): return "\(key): \(m)"
        case let .invalidParameter(fqn, m): return "parameter '\(fqn)': \(m)"
        case let .stateDict(m): return "state dict: \(m)"
        case let .collectiveFailed(rank, m): return "rank \(rank): collective failed inside a model hook: \(m)"
        }
    }
}

/// Parallelism degrees (torchtitan ParallelDims, restricted to the data-parallel and expert dimensions).
///
/// World = replicate × shard. Replica r holds ranks r·shard ..< (r+1)·shard (its FSDP shard group). Inside a shard
/// group, expert parallelism splits the experts over `ep` consecutive ranks; the shard/ep ranks with the same EP
/// index (strided by ep) hold the same experts and shard them FSDP-style (the "expert shard" group).
public struct ParallelDims: Equatable, Sendable, CustomStringConvertible {
    /// HSDP replicate degree (parallelism.data_parallel_replicate_degree).
    public var replicate: Int
    /// FSDP shard degree (parallelism.data_parallel_shard_degree).
    public var shard: Int
    /// Expert-parallel degree (parallelism.expert_parallel_degree); must divide `shard`.
    public var ep: Int

    public init(replicate: Int = 1, shard: Int, ep: Int = 1) {
        self.replicate = replicate
        self.shard = shard
        self.ep = ep
    }

    public var world: Int { replicate * shard }

    public var description: String { "replicate \(replicate) × shard \(shard) (ep \(ep))" }

    /// Checks the degrees against the world size and (when given) the number of routed experts.
    public func validate(worldSize: Int, numExperts: Int?) throws {
        guard replicate >= 1 else {
            throw ParallelError.invalidDegrees(key: "parallelism.data_parallel_replicate_degree", "must be >= 1 (got \(replicate))")
        }
        guard shard >= 1 else {
            throw ParallelError.invalidDegrees(key: "parallelism.data_parallel_shard_degree", "must be >= 1 (got \(shard))")
        }
        guard ep >= 1 else {
            throw ParallelError.invalidDegrees(key: "parallelism.expert_parallel_degree", "must be >= 1 (got \(ep))")
        }
        guard replicate * shard == worldSize else {
            throw ParallelError.invalidDegrees(key: "parallelism.data_parallel_shard_degree",
                "data_parallel_replicate_degree (\(replicate)) × data_parallel_shard_degree (\(shard)) = \(replicate * shard) "
                + "must equal the world size \(worldSize); set data_parallel_shard_degree to \(worldSize / max(replicate, 1)) "
                + "or change the number of ranks")
        }
        guard shard % ep == 0 else {
            throw ParallelError.invalidDegrees(key: "parallelism.expert_parallel_degree",
                "expert_parallel_degree (\(ep)) must divide data_parallel_shard_degree (\(shard)): EP groups live inside an FSDP shard group")
        }
        if ep > 1 {
            guard let e = numExperts else {
                throw ParallelError.invalidDegrees(key: "parallelism.expert_parallel_degree",
                    "expert_parallel_degree is \(ep) but the model has no routed experts; set it to 1")
            }
            guard e % ep == 0 else {
                throw ParallelError.invalidDegrees(key: "parallelism.expert_parallel_degree",
                    "expert_parallel_degree (\(ep)) must divide the number of experts (\(e))")
            }
        }
    }
}

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

    public init(comm: Communicator, dims: ParallelDims, numExperts: Int? = nil) throws {
        try dims.validate(worldSize: comm.worldSize, numExperts: dims.ep > 1 ? (numExperts ?? dims.ep) : numExperts)
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
