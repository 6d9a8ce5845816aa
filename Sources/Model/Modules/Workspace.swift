import Tensor

/// Backward scratch shared by all layers (grows to the largest need; backward of one layer at a time).
final class Workspace {
    let dxn = GrowBuffer()        // [N, D]    grad of a normalized block input
    let dao = GrowBuffer()        // [N, H*hd]
    let dq = GrowBuffer()         // [N, H*hd]
    let dqn = GrowBuffer()        // [N, H*hd]
    let dk = GrowBuffer()         // [N, KV*hd]
    let dkn = GrowBuffer()        // [N, KV*hd]
    let dv = GrowBuffer()         // [N, KV*hd]
    let dTT = GrowBuffer()        // [B, H, T, T] attention backward scratch
    let dh = GrowBuffer(), dh1 = GrowBuffer(), dh3 = GrowBuffer()  // [N, F] dense / shared FFN
    let logits = GrowBuffer()     // [N, E] router logits (forward)
    let dgate = GrowBuffer()      // [N, K]
    let dscores = GrowBuffer()    // [N, E]
    let dlogits = GrowBuffer()    // [N, E]
    let dys = GrowBuffer()        // [N*K, D]
    let dxs = GrowBuffer()        // [N*K, D]
}

/// Owning Int32 buffer.
final class IntBuffer {
    let count: Int
    let data: UnsafeMutablePointer<Int32>
    init(_ n: Int) {
        count = n
        data = .allocate(capacity: max(n, 1))
        data.initialize(repeating: 0, count: max(n, 1))
    }
    deinit { data.deallocate() }
}
