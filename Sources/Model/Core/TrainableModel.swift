/// What the trainer, `titan generate` and the tests need from any model family on top of `ParallelizableModel`:
/// forward/backward over a micro-batch, evaluation, logits, and the load-balancing update. Every family's model
/// (Qwen3Model, DeepSeekV3Model) provides it; nothing outside the Model target names a family's class to train it.
public protocol TrainableModel: ParallelizableModel {
    /// Forward + backward over a (B, T) micro-batch; gradients ACCUMULATED, dloss/dlogit scaled by `lossScale`.
    func forwardBackward(inputs: [Int32], labels: [Int32], B: Int, T: Int, lossScale: Float) -> StepResult
    /// Forward only: summed loss over labelled tokens.
    func evaluate(inputs: [Int32], labels: [Int32], B: Int, T: Int) -> StepResult
    /// Forward only: logits [B·T, V] row-major.
    func logits(inputs: [Int32], B: Int, T: Int) -> [Float]
    /// Auxiliary-loss-free load balancing from (globally summed) tokens per expert, indexed by layer.
    func updateExpertBias(tokensPerExpert: [[Int]])
    /// Selects the local experts' path (grouped or loop) in every MoE layer.
    func setUseGroupedMM(_ on: Bool)
}

extension Qwen3Model: TrainableModel {}
