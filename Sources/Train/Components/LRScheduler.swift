import Config
import Foundation

public enum LRDecayType: String, ConfigEnum, Equatable {
    case linear, sqrt, cosine
}

/// [lr_scheduler]: torchtitan's linear warmup, stable, decay.
public struct LRSchedulerConfig: ConfigSection {
    public var warmup_steps = 200
    /// Fraction of training.steps spent decaying; none = decay over every step after warmup.
    public var decay_ratio: Double? = nil
    public var decay_type = LRDecayType.linear
    /// The decay ends at lr * min_lr_factor.
    public var min_lr_factor = 0.0
    public init() {}

    public static let doc = "linear warmup, stable, decay (torchtitan)"
    public static let fields: [ConfigField<LRSchedulerConfig>] = [
        ConfigField("warmup_steps", \.warmup_steps, "linear warmup steps"),
        ConfigField("decay_ratio", \.decay_ratio, "fraction of steps spent decaying (none: all steps after warmup)"),
        ConfigField("decay_type", \.decay_type, "shape of the decay"),
        ConfigField("min_lr_factor", \.min_lr_factor, "final lr = lr * min_lr_factor"),
    ]

    public func validate() throws {
        if warmup_steps < 0 { throw ConfigError.invalid(key: "warmup_steps", reason: "must be >= 0") }
        if let r = decay_ratio, !(0...1).contains(r) { throw ConfigError.invalid(key: "decay_ratio", reason: "must be in [0, 1] or none, got \(r)") }
        if !(0...1).contains(min_lr_factor) { throw ConfigError.invalid(key: "min_lr_factor", reason: "must be in [0, 1]") }
    }
}

/// torchtitan's `linear_warmup_stable_decay` (components/lr_scheduler.py, min_lr_factor version).
/// torchtitan wraps it in LambdaLR and calls scheduler.step() after each optimizer step, so the
/// optimizer step s (1-based) uses factor(s - 1): `lr(step:)` does that translation.
public struct LRSchedule: Equatable {
    public let baseLR: Double
    public let warmupSteps: Int
    public let stableSteps: Int
    public let decaySteps: Int
    public let decayType: LRDecayType
    public let minLRFactor: Double

    public init(baseLR: Double, trainingSteps: Int, warmupSteps: Int, decayRatio: Double?,
                decayType: LRDecayType, minLRFactor: Double) {
        // Same clamping as torchtitan's build_lr_schedulers.
        let warmup = min(warmupSteps, trainingSteps)
        var decay: Int
        if let r = decayRatio {
            decay = Int((Double(trainingSteps) * r).rounded(.toNearestOrEven))   // Python round()
            if warmup + decay > trainingSteps { decay = trainingSteps - warmup }
        } else {
            decay = trainingSteps - warmup
        }
        self.baseLR = baseLR
        self.warmupSteps = warmup
        self.decaySteps = decay
        // "+1": a virtual last step so the final real step's lr does not drop to 0.
        self.stableSteps = trainingSteps + 1 - warmup - decay
        self.decayType = decayType
        self.minLRFactor = minLRFactor
    }

    public init(_ c: LRSchedulerConfig, baseLR: Double, trainingSteps: Int) {
        self.init(baseLR: baseLR, trainingSteps: trainingSteps, warmupSteps: c.warmup_steps, decayRatio: c.decay_ratio,
                  decayType: c.decay_type, minLRFactor: c.min_lr_factor)
    }

    /// The LambdaLR multiplier for 0-based scheduler position `currentStep`.
    public func factor(_ currentStep: Int) -> Double {
        let warmupStable = warmupSteps + stableSteps
        if currentStep < warmupSteps {
            return Double(currentStep + 1) / Double(warmupSteps)
        } else if currentStep < warmupStable || decaySteps == 0 {
            return 1.0   // decaySteps == 0 only reaches here past the last step; torchtitan asserts
        }
        let progress = Double(currentStep + 1 - warmupStable) / Double(decaySteps)
        let adj: Double
        switch decayType {
        case .linear: adj = 1 - progress
        case .sqrt: adj = 1 - progress.squareRoot()
        case .cosine: adj = 0.5 * (1.0 + cos(Double.pi * progress))
        }
        return minLRFactor + (1 - minLRFactor) * adj
    }

    /// Learning rate used by optimizer step `step` (1-based).
    public func lr(step: Int) -> Double { baseLR * factor(step - 1) }
}
