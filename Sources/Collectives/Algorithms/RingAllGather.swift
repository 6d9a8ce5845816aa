import Foundation

/// Ring all-gather (bandwidth-optimal: each rank sends and receives (n-1)/n of the buffer once).
///
/// `output` holds every member's chunk at `layout`; this rank's own chunk must already be in place.
/// Step s (0 ..< n-1): receive chunk (r-s-1) mod n from the previous rank, forward it to the next
/// (unless the next rank owns it) and copy it into place. Chunk sizes may differ (all-gather-v).
func ringAllGather<C: Channel>(_ ch: C, output: UnsafeMutableRawPointer, layout: ChunkLayout, elementSize: Int) throws {
    let n = ch.size, r = ch.me
    guard n > 1 else { return }
    let next = (r + 1) % n, prev = (r + n - 1) % n

    for seg in Segments.of([layout.range(r)], elementSize: elementSize) {
        try ch.send(to: next, bytes: output + seg.lowerBound, count: seg.count)
    }
    for s in 0..<(n - 1) {
        let c = (r + 2 * n - s - 1) % n
        for seg in Segments.of([layout.range(c)], elementSize: elementSize) {
            let m = try ch.receive(from: prev, expectedBytes: seg.count)
            if s < n - 2 { try ch.send(to: next, payload: m.share()) }  // forward first: the copy overlaps the send
            if seg.count > 0 { memcpy(output + seg.lowerBound, m.bytes, seg.count) }
        }
    }
}
