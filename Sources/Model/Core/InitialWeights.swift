import Tensor

/// Weights a model built without parameter storage starts from (`Qwen3Model.setInitialWeights`): the wrapper that
/// takes a parameter over (expert parallelism, FSDP) asks for just the slices it keeps.
public protocol InitialWeights: AnyObject {
    /// Full shape of every parameter the source holds, by torchtitan FQN.
    var parameterShapes: [String: [Int]] { get }
    /// Elements `elements` (flat, row-major) of parameter `fqn`, as Float32, into out[0..<elements.count].
    func read(_ fqn: String, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws
    /// A buffer's values (expert_bias), or nil when the source has none (the model zeroes it).
    func buffer(_ fqn: String) -> HostTensor?
}

/// Initial weights held in memory as a full state dict.
public final class StateDictWeights: InitialWeights {
    public let stateDict: StateDict
    public let parameterShapes: [String: [Int]]

    /// `bufferNames` are the entries that are buffers, not parameters.
    public init(_ stateDict: StateDict, bufferNames: Set<String>) {
        self.stateDict = stateDict
        parameterShapes = stateDict.filter { !bufferNames.contains($0.key) }.mapValues(\.shape)
    }

    public func read(_ fqn: String, elements: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        guard let t = stateDict[fqn], elements.lowerBound >= 0, elements.upperBound <= t.values.count else {
            throw ModelError.missingKeys(["\(fqn)[\(elements)]"])
        }
        t.values.withUnsafeBufferPointer { out.update(from: $0.baseAddress! + elements.lowerBound, count: elements.count) }
    }

    public func buffer(_ fqn: String) -> HostTensor? { stateDict[fqn] }
}
