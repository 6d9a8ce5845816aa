import Foundation

/// Ring reduce-scatter (bandwidth-optimal). `input` holds n chunks at `layout`; this rank's reduced
/// chunk r goes to `output`, which may alias input chunk r.
///
/// Step 0 sends input chunk (r-1) mod n to the next rank; at step s a rank receives the partial sum of
/// chunk (r-s-2) mod n, adds its own contribution into a fresh message and forwards that (never the
/// received buffer: over inproc it is the sender's own memory); at the last
/// step it receives chunk r and writes received + own into `output`. Chunk c is therefore always summed
/// in the same order (ranks c+1, c+2, ..., c), so results are deterministic run to run.
func ringReduceScatter<C: Channel>(_ ch: C, input: UnsafeRawPointer, output: UnsafeMutableRawPointer,
                       layout: ChunkLayout, reduction: ByteReduction) throws {
    let n = ch.size, r = ch.me
    let es = reduction.elementSize
    guard n > 1 else {
        if layout.sizes[0] > 0, output != UnsafeMutableRawPointer(mutating: input) { memmove(output, input, layout.sizes[0]) }
        return
    }
    let next = (r + 1) % n, prev = (r + n - 1) % n

    let first = (r + n - 1) % n
    for seg in Segments.of(layout.sizes[first], elementSize: es) {
        try ch.send(to: next, bytes: input + layout.offsets[first] + seg.lowerBound, count: seg.count)
    }
    for s in 0..<(n - 1) {
        let c = (r + 2 * n - s - 2) % n
        for seg in Segments.of(layout.sizes[c], elementSize: es) {
            let m = try ch.receive(from: prev, expectedBytes: seg.count)
            let own = input + layout.offsets[c] + seg.lowerBound
            if s < n - 2 {
                let partial = try ch.newMessage(bytes: seg.count)
                reduction.combine(partial.bytes, m.bytes, own, seg.count)
                try ch.send(to: next, payload: partial)
            } else {
                reduction.combine(output + seg.lowerBound, m.bytes, own, seg.count)
            }
        }
    }
}
