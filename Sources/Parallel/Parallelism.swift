import Config
import Model

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

/// torchtitan's fsdp_reshard_after_forward: free gathered parameters after a block's forward (always: least memory;
/// default: all but the last transformer block, whose backward follows at once) or keep them for backward (never: one
/// all-gather per block less).
public enum ReshardAfterForward: String, ConfigEnum, Equatable, Sendable {
    case `default`, always, never
}

/// How expert-parallel groups are carved out of a replica's shard group. Topologies number ranks host by host, so
/// consecutive ranks share a host: `consecutive` keeps each EP group's all-to-all within a host whenever the host's
/// rank count is a multiple of ep; `strided` takes every (shard/ep)-th rank, spreading each group over the hosts and
/// keeping the expert-shard groups (the ranks that FSDP-shard the same experts) within one. `auto` (the default) picks
/// the one that sends fewer bytes between hosts (`ExpertTraffic`); on one host, `consecutive`.
public enum ExpertParallelPlacement: String, ConfigEnum, Equatable, Sendable {
    case auto, consecutive, strided
}

/// The two traffics expert parallelism places, in bytes one rank sends per micro-batch: the EP group's all-to-all
/// (token rows out and back, forward and backward) and the expert-shard group's FSDP collectives over the routed
/// experts (their all-gathers and the gradients' reduce-scatter). Whichever is larger should stay within a host.
public struct ExpertTraffic: Equatable, Sendable {
    public var allToAllBytes: Double
    public var expertShardBytes: Double

    /// For `model`'s MoE layers at `tokens` tokens per rank and micro-batch: per layer the all-to-all moves
    /// 4 × tokens × top_k × dim rows' values (dispatch and combine, forward and backward) at the wire's precision, of
    /// which (ep-1)/ep leave the rank; the expert-shard group all-gathers the rank's experts (routed parameters / ep)
    /// once per pass that needs them (forward, and backward again when they were resharded) and reduce-scatters their
    /// gradients, (s-1)/s of each leaving the rank (s = shard / ep).
    public init(model: ParallelizableModel, dims: ParallelDims, tokens: Int, mixedPrecision: MixedPrecisionPolicy,
                reshardAfterForward: ReshardAfterForward) {
        let ep = Double(dims.ep), s = Double(dims.shard / dims.ep)
        let paramBytes = mixedPrecision.param == .bfloat16 ? 2.0 : 4.0
        let gradBytes = mixedPrecision.reduce == .bfloat16 ? 2.0 : 4.0
        let gathers = reshardAfterForward == .never ? 1.0 : 2.0
        var a2a = 0.0, shard = 0.0
        for moe in model.moeModules {
            a2a += 4 * Double(tokens * moe.args.top_k * moe.dim) * paramBytes * (ep - 1) / ep
            let local = Double(moe.routedExpertParameters.reduce(0) { $0 + $1.count }) / ep
            shard += local * (gathers * paramBytes + gradBytes) * (s - 1) / s
        }
        allToAllBytes = a2a
        expertShardBytes = shard
    }

    /// `auto`'s choice for ranks on `hostOfRank` (the topology's host index per global rank): the placement whose EP
    /// and expert-shard groups send fewer bytes to peers on other hosts (each group's traffic spread evenly over its
    /// peers); `consecutive` on one host and on a tie.
    public func placement(dims: ParallelDims, hostOfRank: [Int]) -> ExpertParallelPlacement {
        guard dims.ep > 1, Set(hostOfRank).count > 1 else { return .consecutive }
        func interHostBytes(_ placement: ExpertParallelPlacement) -> Double {
            let groups = DeviceMesh.expertGroups(dims: dims, placement: placement)
            return allToAllBytes * Self.remoteShare(groups.ep, hostOfRank)
                + expertShardBytes * Self.remoteShare(groups.expertShard, hostOfRank)
        }
        return interHostBytes(.strided) < interHostBytes(.consecutive) ? .strided : .consecutive
    }

    /// The mean share of a member's peers that run on another host, over every member of `groups`.
    static func remoteShare(_ groups: [[Int]], _ hostOfRank: [Int]) -> Double {
        var share = 0.0, members = 0
        for g in groups where g.count > 1 {
            for a in g {
                share += Double(g.filter { hostOfRank[$0] != hostOfRank[a] }.count) / Double(g.count - 1)
                members += 1
            }
        }
        return members == 0 ? 0 : share / Double(members)
    }
}

/// The [parallelism] section (torchtitan's names).
public struct ParallelismConfig: ConfigSection, Sendable {
    public var data_parallel_replicate_degree = 1
    /// -1 = every rank not used by the other degrees (torchtitan convention).
    public var data_parallel_shard_degree = -1
    public var expert_parallel_degree = 1
    public var fsdp_reshard_after_forward = ReshardAfterForward.default
    public var expert_parallel_placement = ExpertParallelPlacement.auto

    public init() {}

    public static let doc = "data / expert parallel degrees"
    public static let fields: [ConfigField<ParallelismConfig>] = [
        ConfigField("data_parallel_replicate_degree", \.data_parallel_replicate_degree, "DDP replicas"),
        ConfigField("data_parallel_shard_degree", \.data_parallel_shard_degree, "FSDP shard degree (-1: all remaining ranks)"),
        ConfigField("expert_parallel_degree", \.expert_parallel_degree, "ranks that split the experts of a layer"),
        ConfigField("fsdp_reshard_after_forward", \.fsdp_reshard_after_forward,
                    "free gathered parameters after forward (always; default keeps the last block) or keep them for backward (never)"),
        ConfigField("expert_parallel_placement", \.expert_parallel_placement,
                    "expert-parallel groups of consecutive ranks (within a host when its ranks allow), strided over the shard group (across hosts), or auto: whichever sends fewer bytes between hosts"),
    ]

    /// The degrees for `worldSize` ranks, data_parallel_shard_degree -1 filled in, checked by `ParallelDims.validate`.
    /// `numExperts`: routed experts per MoE layer (0: a dense model; nil: not known yet, not checked).
    public func dims(worldSize: Int, numExperts: Int?) throws -> ParallelDims {
        let r = data_parallel_replicate_degree
        var shard = data_parallel_shard_degree
        if shard == -1 {
            guard r >= 1, worldSize % r == 0 else {
                throw ParallelError.invalidDegrees(key: "parallelism.data_parallel_replicate_degree",
                    "\(r) does not divide the world size \(worldSize), so data_parallel_shard_degree = -1 cannot fill the rest")
            }
            shard = worldSize / r
        }
        let dims = ParallelDims(replicate: r, shard: shard, ep: expert_parallel_degree)
        try dims.validate(worldSize: worldSize, numExperts: numExperts)
        return dims
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

    /// The rules of the degrees, all of them in one place: each at least 1, replicate × shard = the world, ep divides
    /// shard and (when `numExperts` is known: 0 for a dense model) the number of routed experts.
    public func validate(worldSize: Int, numExperts: Int?) throws {
        func bad(_ key: String, _ reason: String) -> ParallelError { .invalidDegrees(key: "parallelism." + key, reason) }
        guard replicate >= 1 else { throw bad("data_parallel_replicate_degree", "must be >= 1 (got \(replicate))") }
        guard shard >= 1 else { throw bad("data_parallel_shard_degree", "must be >= 1, or -1 to fill the world (got \(shard))") }
        guard ep >= 1 else { throw bad("expert_parallel_degree", "must be >= 1 (got \(ep))") }
        guard replicate * shard == worldSize else {
            throw bad("data_parallel_shard_degree",
                "data_parallel_replicate_degree (\(replicate)) × data_parallel_shard_degree (\(shard)) = \(replicate * shard), "
                + "but the world size is \(worldSize); set data_parallel_shard_degree to -1 (fills the world) "
                + "or change the number of ranks")
        }
        guard shard % ep == 0 else {
            throw bad("expert_parallel_degree",
                "\(ep) does not divide data_parallel_shard_degree (\(shard)): expert-parallel groups are carved out of the shard group")
        }
        if let numExperts { try Self.validateExperts(ep: ep, numExperts: numExperts) }
    }

    /// Expert parallelism over `ep` ranks needs a model with routed experts (`numExperts` > 0), split evenly.
    public static func validateExperts(ep: Int, numExperts: Int) throws {
        guard ep > 1 else { return }
        guard numExperts > 0 else {
            throw ParallelError.invalidDegrees(key: "parallelism.expert_parallel_degree",
                "\(ep) but the model has no routed experts (moe_enabled with at least one MoE layer); set it to 1")
        }
        guard numExperts % ep == 0 else {
            throw ParallelError.invalidDegrees(key: "parallelism.expert_parallel_degree",
                "\(ep) must divide the number of experts (\(numExperts))")
        }
    }
}

/// Applies the parallelism of `dims` to `model` from outside, as torchtitan's `parallelize_fn` does: expert
/// parallelism first (each MoE layer's experts narrowed to this EP rank's and swapped for an all-to-all dispatcher),
/// then FSDP (HSDP with replicas) over every parameter group, with `mixedPrecision` (bfloat16 parameters also make
/// the expert-parallel token rows bfloat16). Collective: every rank calls it in the same order.
public func parallelize(_ model: ParallelizableModel, mesh: DeviceMesh, reshardAfterForward: ReshardAfterForward,
                        mixedPrecision: MixedPrecisionPolicy = MixedPrecisionPolicy()) throws -> FullyShardedModel {
    if let ep = mesh.ep {
        try ExpertParallel.apply(to: model, epGroup: ep, wire: mixedPrecision.param)
        // A failed exchange becomes a typed error after backward instead of stopping the process.
        for dispatcher in ExpertParallel.dispatchers(in: model) { dispatcher.failFast = false }
    }
    return try FullyShardedModel(model: model, mesh: mesh, reshardAfterForward: reshardAfterForward != .never,
                                 keepLastBlockGathered: reshardAfterForward == .default, mixedPrecision: mixedPrecision)
}
