import Model
import Tensor

/// The experts of a single-rank reference as bfloat16 expert-parallel dispatch leaves them: outputs and input
/// gradients rounded to bfloat16 on their way back (the dispatched inputs and output gradients feed only bfloat16
/// GEMMs, which round them anyway).
final class WireRoundedExperts: MoEExperts {
    let inner: MoEExperts, dim: Int
    init(_ inner: MoEExperts, dim: Int) { self.inner = inner; self.dim = dim }
    func forward(x_SD: UnsafePointer<Float>, counts_E: [Int], y_SD: UnsafeMutablePointer<Float>) {
        inner.forward(x_SD: x_SD, counts_E: counts_E, y_SD: y_SD)
        round_bf16(y_SD, into: y_SD, counts_E.reduce(0, +) * dim)
    }
    func backward(x_SD: UnsafePointer<Float>, dy_SD: UnsafePointer<Float>, counts_E: [Int], dx_SD: UnsafeMutablePointer<Float>) {
        inner.backward(x_SD: x_SD, dy_SD: dy_SD, counts_E: counts_E, dx_SD: dx_SD)
        round_bf16(dx_SD, into: dx_SD, counts_E.reduce(0, +) * dim)
    }
}
