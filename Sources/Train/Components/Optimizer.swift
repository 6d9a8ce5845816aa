import Config
import Parallel
import Runtime
import Tensor

public enum OptimizerName: String, ConfigEnum, Equatable {
    case AdamW
}

/// [optimizer]: torch.optim.AdamW's hyper-parameters (torchtitan's names).
public struct OptimizerConfig: ConfigSection {
    public var name = OptimizerName.AdamW
    public var lr = 8e-4
    public var beta1 = 0.9
    public var beta2 = 0.95
    public var eps = 1e-8
    public var weight_decay = 0.1
    public init() {}

    public static let doc = "AdamW (torch.optim.AdamW semantics)"
    public static let fields: [ConfigField<OptimizerConfig>] = [
        ConfigField("name", \.name, "optimizer"),
        ConfigField("lr", \.lr, "peak learning rate"),
        ConfigField("beta1", \.beta1, "AdamW first-moment decay"),
        ConfigField("beta2", \.beta2, "AdamW second-moment decay"),
        ConfigField("eps", \.eps, "AdamW denominator epsilon"),
        ConfigField("weight_decay", \.weight_decay, "decoupled weight decay"),
    ]

    public func validate() throws {
        if lr < 0 { throw ConfigError.invalid(key: "lr", reason: "must be >= 0") }
        if !(0..<1).contains(beta1) { throw ConfigError.invalid(key: "beta1", reason: "must be in [0, 1)") }
        if !(0..<1).contains(beta2) { throw ConfigError.invalid(key: "beta2", reason: "must be in [0, 1)") }
        if eps < 0 { throw ConfigError.invalid(key: "eps", reason: "must be >= 0") }
    }

    /// The optimizer over this rank's parameter shards.
    public func build(shards: [ParameterShard]) -> AdamW {
        switch name {
        case .AdamW: return AdamW(self, shards: shards)
        }
    }
}

/// AdamW over this rank's parameter shards (torch.optim.AdamW, single-tensor path): the moments of each shard live
/// with it, and the state dict names them by the shard, so a checkpoint saves and reshards them like the parameters.
public final class AdamW {
    /// One shard and its moments (exp_avg, exp_avg_sq), as long as the shard.
    public struct ShardState {
        public let shard: ParameterShard
        public let expAvg: Tensor
        public let expAvgSq: Tensor
    }

    public let config: OptimizerConfig
    public let states: [ShardState]

    public init(_ config: OptimizerConfig, shards: [ParameterShard]) {
        self.config = config
        states = shards.map { ShardState(shard: $0, expAvg: Tensor(shape: [$0.count]), expAvgSq: Tensor(shape: [$0.count])) }
    }

    /// Optimizer step `t` (1-based) at learning rate `lr`, the gradients first multiplied by `gradScale` (the
    /// clipping coefficient, < 1 when clipping): one fused pass per shard, split into element ranges on the kernel
    /// threads (the same bits for any split: the update is element-wise).
    public func step(_ t: Int, lr: Double, gradScale: Float) {
        let c = config
        let scalars = AdamWScalars(lr: lr, beta1: Float(c.beta1), beta2: Float(c.beta2), eps: Float(c.eps),
                                   weightDecay: Float(c.weight_decay), step: t, clip: gradScale)
        for s in states {
            let p = s.shard.param, g = s.shard.grad, m = s.expAvg.data, v = s.expAvgSq.data
            parallelFor(s.shard.count, costPerItem: 16) { r in
                let o = r.lowerBound
                adamw_update(param: p + o, grad: g + o, expAvg: m + o, expAvgSq: v + o, count: r.count, scalars)
            }
        }
    }

    /// The state to checkpoint: each moment of each shard, named as torch names it ("exp_avg", "exp_avg_sq").
    public var stateDict: [(name: String, shard: ParameterShard, values: UnsafeMutablePointer<Float>)] {
        states.flatMap { [("exp_avg", $0.shard, $0.expAvg.data), ("exp_avg_sq", $0.shard, $0.expAvgSq.data)] }
    }

    /// Names of the moments in `stateDict`, for a checkpoint's expected keys.
    public static let stateNames = ["exp_avg", "exp_avg_sq"]

    /// Bytes of the moments on this rank.
    public var stateBytes: Int { states.reduce(0) { $0 + 2 * $1.shard.count * MemoryLayout<Float>.stride } }
}

/// torch.nn.utils.clip_grad_norm_'s multiplier: min(max_norm / (total_norm + 1e-6), 1), computed in float32 like
/// torch's tensors; 1 when max_norm <= 0 (clipping off). The optimizer applies it in its pass (`AdamW.step`).
public func clipCoefficient(totalNorm: Float, maxNorm: Float) -> Float {
    guard maxNorm > 0 else { return 1 }
    return min(maxNorm / (totalNorm + 1e-6), 1.0)
}
