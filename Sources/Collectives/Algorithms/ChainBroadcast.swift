import Foundation

/// Broadcast along a pipelined chain root → root+1 → ... → root-1: with the buffer cut into segments,
/// every link carries the buffer once and all links work at the same time (bandwidth-optimal).
func chainBroadcast<C: Channel>(_ ch: C, buffer: UnsafeMutableRawPointer, bytes: Int, root: Int, elementSize: Int) throws {
    let n = ch.size, r = ch.me
    guard n > 1 else { return }
    let position = (r + n - root) % n
    let next = (r + 1) % n, prev = (r + n - 1) % n
    for seg in Segments.of(bytes, elementSize: elementSize) {
        if position == 0 {
            try ch.send(to: next, bytes: buffer + seg.lowerBound, count: seg.count)
        } else {
            let m = try ch.receive(from: prev, expectedBytes: seg.count)
            if position < n - 1 { try ch.send(to: next, payload: m.share()) }
            if seg.count > 0 { memcpy(buffer + seg.lowerBound, m.bytes, seg.count) }
        }
    }
}
