/// Grow-only Float scratch: reallocates only when a larger size is asked for (by at least 25%, so
/// slowly growing sizes such as routed-token counts settle quickly). No allocation in steady state.
public final class GrowBuffer {
    public private(set) var tensor = Tensor(shape: [0])

    public init() {}

    /// Makes room for `n` floats now, UNINITIALISED (callers write before they read): for sizes that drift up to a
    /// known bound, so the buffer is never reallocated and re-faulted on the way; untouched pages cost no memory.
    public func reserve(_ n: Int) {
        if tensor.count < n { tensor = Tensor(shape: [n], zeroed: false) }
    }

    public func get(_ n: Int) -> UnsafeMutablePointer<Float> {
        if tensor.count < n { tensor = Tensor(shape: [max(n, tensor.count * 5 / 4)]) }
        return tensor.data
    }

    /// Room for `n` bfloat16 values (bits) in the same storage.
    public func getBF16(_ n: Int) -> UnsafeMutablePointer<UInt16> {
        UnsafeMutableRawPointer(get((n + 1) / 2)).assumingMemoryBound(to: UInt16.self)
    }
}
