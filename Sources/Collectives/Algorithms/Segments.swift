/// Large chunks travel as several messages so that the next hop starts forwarding (and reducing)
/// before the whole chunk has arrived. An empty chunk is still one (empty) message: every rank
/// takes part in every exchange, whatever it has to say.
enum Segments {
    static let bytes = 512 << 10

    static func of(_ count: Int, elementSize: Int) -> [Range<Int>] {
        if count == 0 { return [0..<0] }
        let step = max(elementSize, bytes - bytes % elementSize)
        return stride(from: 0, to: count, by: step).map { $0..<min($0 + step, count) }
    }

    /// The segments of several byte ranges of one buffer, as ranges of that buffer (an empty range is one empty segment).
    static func of(_ ranges: [Range<Int>], elementSize: Int) -> [Range<Int>] {
        ranges.flatMap { range in of(range.count, elementSize: elementSize).map { ($0.lowerBound + range.lowerBound)..<($0.upperBound + range.lowerBound) } }
    }
}

/// Byte layout of a buffer split into one chunk per group member.
struct ChunkLayout {
    let offsets: [Int]
    let sizes: [Int]

    init(sizes: [Int]) {
        self.sizes = sizes
        var o = 0
        offsets = sizes.map { s in defer { o += s }; return o }
    }

    var total: Int { (offsets.last ?? 0) + (sizes.last ?? 0) }

    /// Chunk i's byte range.
    func range(_ i: Int) -> Range<Int> { offsets[i]..<(offsets[i] + sizes[i]) }

    /// `count` elements split as evenly as possible over `parts` chunks (the first ones one longer).
    static func even(count: Int, parts: Int, elementSize: Int) -> ChunkLayout {
        ChunkLayout(sizes: (0..<parts).map { (count / parts + ($0 < count % parts ? 1 : 0)) * elementSize })
    }
}
