import Foundation
import XCTest
@testable import Collectives

/// The bfloat16 payload type: its scalar conversion (Swift) against the bulk one (C, AVX-512 where the CPU has it),
/// and a bfloat16 reduce-scatter over the in-memory channel against a local sum that rounds after every addition in
/// ring order.
final class BFloat16Tests: XCTestCase {
    func testScalarAndBulkConversionsAgree() {
        var rng = SplitMix(seed: 5)
        var x: [Float] = [0, -0.0, 1 + 0x1p-8, 1 + 3 * 0x1p-8, .infinity, -.infinity, .nan, -.nan, 0x1.FFp127, Float(1e-40 as Double)]
        for _ in 0..<100_003 { x.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))) }
        var bulk = [BFloat16](repeating: BFloat16(bits: 0), count: x.count)
        x.withUnsafeBufferPointer { src in bulk.withUnsafeMutableBufferPointer { BFloat16.narrow(src.baseAddress!, into: $0.baseAddress!, count: x.count) } }
        var mismatches = 0
        for i in x.indices where BFloat16(x[i]) != bulk[i] { mismatches += 1 }
        XCTAssertEqual(mismatches, 0)
        XCTAssertEqual(BFloat16(1 + 0x1p-8).float, 1, "a tie rounds to the even neighbour")
        XCTAssertEqual(BFloat16(1 + 3 * 0x1p-8).float, 1 + 0x1p-6)
        XCTAssertEqual(BFloat16(-.nan).bits, 0x7FC0, "every NaN becomes 0x7FC0, as in torch")
        XCTAssertEqual(BFloat16(0x1.FFp127).float, .infinity)
        var wide = [Float](repeating: 0, count: x.count)
        bulk.withUnsafeBufferPointer { src in wide.withUnsafeMutableBufferPointer { BFloat16.widen(src.baseAddress!, into: $0.baseAddress!, count: x.count) } }
        for i in x.indices where wide[i].bitPattern != bulk[i].float.bitPattern { mismatches += 1 }
        XCTAssertEqual(mismatches, 0, "widening is exact")
    }

    func testRingReduceScatterRoundsAfterEveryAddition() throws {
        for n in [2, 3, 5] {
            let counts = (0..<n).map { [5, 70_000, 0, 3][$0 % 4] }
            let layout = ChunkLayout(sizes: counts.map { $0 * 2 })
            let total = counts.reduce(0, +)
            let inputs = (0..<n).map { r -> [BFloat16] in
                var rng = SplitMix(seed: UInt64(r) + 1)
                return (0..<total).map { _ in BFloat16(Float(rng.nextUnit() * 2 - 1)) }
            }
            let net = MemoryNetwork(size: n)
            let outputs = try net.run { ch in
                var out = [BFloat16](repeating: BFloat16(bits: 0), count: counts[ch.me])
                try inputs[ch.me].withUnsafeBytes { i in
                    try out.withUnsafeMutableBytes { o in
                        try ringReduceScatter(ch, input: i.baseAddress!, output: o.baseAddress ?? UnsafeMutableRawPointer(mutating: i.baseAddress!),
                                              layout: layout, reduction: ByteReduction(BFloat16.self, .sum))
                    }
                }
                return out
            }
            for r in 0..<n {
                let o = layout.offsets[r] / 2
                let expected = (0..<counts[r]).map { i -> BFloat16 in
                    var s = inputs[(r + 1) % n][o + i]
                    for k in 2...n { s = BFloat16(s.float + inputs[(r + k) % n][o + i].float) }
                    return s
                }
                XCTAssertEqual(outputs[r], expected, "n \(n) member \(r)")
            }
        }
    }
}
